"""Guided Backprop.

captum's GuidedBackprop overrides only ``nn.ReLU`` modules. Any other nonlinearity on the path keeps its
plain gradient, and the map silently becomes something that is not Guided Backprop. Every audited model
is a converted graph with one ``nn.ReLU`` per Relu node, so ``check_supported`` reads the graph and
refuses, naming each other nonlinearity (see ``onnx_import.nonlinearities``).
"""

import warnings

import torch
from captum.attr import GuidedBackprop as CaptumGuidedBackprop
from torch import Tensor, nn

from workers.core.errors import MethodUnsupportedError
from workers.engine.methods.base import PartFn, SaliencyMethod
from workers.engine.onnx_import import OnnxGraphModule
from workers.engine.onnx_import.nonlinearities import non_relu_nonlinearities
from workers.engine.passes import count_passes

GUIDED = "guided_backprop"  # the part Guided GradCAM shares with Guided Backprop
GUIDED_GRADCAM_PARTS = "guided_gradcam_parts"  # the family of Guided Backprop, GradCAM and Guided GradCAM


def refuse_non_relu(method: str, model: nn.Module) -> None:
    """Guided backpropagation is defined only where every nonlinearity is a ReLU."""
    if not isinstance(model, OnnxGraphModule):
        raise MethodUnsupportedError(f"{method}: only converted models can be checked for ReLUs")
    found = non_relu_nonlinearities(model)
    if found:
        listed = ", ".join(f"{count} x {name}" for name, count in sorted(found.items()))
        raise MethodUnsupportedError(
            f"{method}: the model has nonlinearities other than ReLU ({listed}); guided backpropagation is "
            "defined only where every nonlinearity is a ReLU, and would return plain gradients through "
            "these. Leave this method out for this model."
        )


class GuidedBackprop(SaliencyMethod):
    name = "guided_backprop"
    family = GUIDED_GRADCAM_PARTS

    def check_supported(self, model: nn.Module, example: Tensor) -> None:
        refuse_non_relu(self.name, model)

    def parts(self) -> dict[str, PartFn]:
        return {GUIDED: self.guided_maps}

    def combine(self, parts: dict[str, Tensor | tuple[Tensor, ...]], inputs: Tensor) -> Tensor:
        return parts[GUIDED]  # type: ignore[return-value]

    def guided_maps(
        self, model: nn.Module, inputs: Tensor, target: Tensor, generator: torch.Generator
    ) -> Tensor:
        count_passes(len(inputs), backward=True)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU", category=UserWarning)
            maps = CaptumGuidedBackprop(model).attribute(inputs.detach().requires_grad_(True), target=target)
        return maps.detach()
