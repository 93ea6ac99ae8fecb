"""Guided Backprop, GradCAM and Guided GradCAM.

captum's GuidedBackprop overrides only ``nn.ReLU`` modules: a ReLU applied as a function (``F.relu``,
``torch.relu``, ``x.relu()``) keeps its plain gradient and the map silently degrades to something that is
not Guided Backprop. ``check_supported`` counts ReLUs run as functions on a forward pass and refuses.
"""

import warnings

import torch
import torch.nn.functional as F
from captum.attr import GuidedBackprop as CaptumGuidedBackprop
from captum.attr import LayerGradCam
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from workers.engine.errors import MethodUnsupportedError
from workers.engine.methods.base import SaliencyMethod

_RELU_FUNCTIONS = frozenset({torch.relu, torch.relu_, F.relu, F.relu_, torch.Tensor.relu, torch.Tensor.relu_})


class _ReluCallCounter(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func in _RELU_FUNCTIONS:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def functional_relu_calls(model: nn.Module, example: Tensor) -> int:
    """How many ReLUs a forward pass applies outside ``nn.ReLU`` modules."""
    module_calls = 0

    def count_module_call(*_: object) -> None:
        nonlocal module_calls
        module_calls += 1

    handles = [m.register_forward_hook(count_module_call) for m in model.modules() if isinstance(m, nn.ReLU)]
    counter = _ReluCallCounter()
    try:
        with torch.no_grad(), counter:
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    # nn.ReLU.forward itself calls F.relu, and F.relu may call torch.relu: count each module call once.
    return max(0, counter.calls - _calls_per_relu_module() * module_calls)


def _calls_per_relu_module() -> int:
    counter = _ReluCallCounter()
    with torch.no_grad(), counter:
        nn.ReLU()(torch.zeros(1))
    return counter.calls


class GuidedBackprop(SaliencyMethod):
    name = "guided_backprop"

    def check_supported(self, model: nn.Module, example: Tensor) -> None:
        calls = functional_relu_calls(model, example)
        if calls:
            raise MethodUnsupportedError(
                f"{self.name}: the model applies {calls} ReLU(s) as functions rather than nn.ReLU modules; "
                "guided backpropagation cannot override those and would return plain gradients there. "
                "Export the model to ONNX (every Relu node becomes a module) or leave this method out."
            )

    def attribute(
        self, model: nn.Module, inputs: Tensor, target: Tensor, generator: torch.Generator
    ) -> Tensor:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU", category=UserWarning)
            maps = CaptumGuidedBackprop(model).attribute(inputs.detach().requires_grad_(True), target=target)
        return maps.detach()


class GradCam(SaliencyMethod):
    """Last convolution (unless told), ReLU, divided by its max, upsampled bilinearly to the input size."""

    name = "gradcam"

    def parameters(self) -> dict[str, float | int | str | None]:
        return {"layer": self.context.gradcam_layer, "upsampling": "bilinear", "scaling": "divide by max"}

    def check_supported(self, model: nn.Module, example: Tensor) -> None:
        layer = self.context.gradcam_layer
        if layer is None:
            raise MethodUnsupportedError(
                f"{self.name}: the model has no 2-D convolution to read; name a layer with gradcam_layer "
                "or leave GradCAM methods out"
            )
        modules = dict(model.named_modules())
        if layer not in modules:
            raise MethodUnsupportedError(f"{self.name}: the model has no layer named {layer!r}")
        shapes: list[torch.Size] = []
        handle = modules[layer].register_forward_hook(lambda _m, _i, output: shapes.append(output.shape))
        try:
            with torch.no_grad():
                model(example)
        finally:
            handle.remove()
        if not shapes or len(shapes[0]) != 4:
            shown = list(shapes[0]) if shapes else "nothing"
            raise MethodUnsupportedError(
                f"{self.name}: layer {layer!r} outputs {shown}; GradCAM needs a layer with an [N, C, H, W] "
                "output such as a 2-D convolution"
            )

    def attribute(
        self, model: nn.Module, inputs: Tensor, target: Tensor, generator: torch.Generator
    ) -> Tensor:
        layer = dict(model.named_modules())[self.context.gradcam_layer]
        cam = LayerGradCam(model, layer).attribute(inputs, target=target, relu_attributions=True).detach()
        cam = F.interpolate(cam, size=inputs.shape[-2:], mode="bilinear", align_corners=False)
        peak = cam.flatten(1).max(dim=1).values.view(-1, 1, 1, 1)
        return torch.where(peak > 0, cam / peak.clamp_min(torch.finfo(cam.dtype).tiny), torch.zeros_like(cam))


class GuidedGradCam(SaliencyMethod):
    """Guided Backprop x GradCAM, each computed as above."""

    name = "guided_gradcam"

    def __init__(self, context) -> None:  # type: ignore[no-untyped-def]
        super().__init__(context)
        self._guided = GuidedBackprop(context)
        self._cam = GradCam(context)

    def parameters(self) -> dict[str, float | int | str | None]:
        return self._cam.parameters()

    def check_supported(self, model: nn.Module, example: Tensor) -> None:
        self._guided.check_supported(model, example)
        self._cam.check_supported(model, example)

    def attribute(
        self, model: nn.Module, inputs: Tensor, target: Tensor, generator: torch.Generator
    ) -> Tensor:
        return self._guided.attribute(model, inputs, target, generator) * self._cam.attribute(
            model, inputs, target, generator
        )
