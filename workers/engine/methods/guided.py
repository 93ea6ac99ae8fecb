"""Guided Backprop, GradCAM and Guided GradCAM.

captum's GuidedBackprop overrides only ``nn.ReLU`` modules. Any other rectifier on the path, a ReLU
applied as a function (``F.relu``), a ReLU6 (ONNX ``Clip``), a LeakyReLU or a GELU, keeps its plain
gradient, and the map silently becomes something that is not Guided Backprop. ``check_supported``
counts such operations on a forward pass and refuses.
"""

import warnings

import torch
import torch.nn.functional as F
from captum.attr import GuidedBackprop as CaptumGuidedBackprop
from captum.attr import LayerGradCam
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from workers.engine.errors import MethodUnsupportedError
from workers.engine.layers import forward_with_hooks
from workers.engine.methods.base import SaliencyMethod

_RELU_FUNCTIONS = frozenset({torch.relu, torch.relu_, F.relu, F.relu_, Tensor.relu, Tensor.relu_})
_OTHER_RECTIFIERS = frozenset(
    {
        F.relu6,
        F.leaky_relu,
        F.leaky_relu_,
        F.prelu,
        F.rrelu,
        F.elu,
        F.selu,
        F.celu,
        F.gelu,
        F.silu,
        F.mish,
        F.hardswish,
        F.hardsigmoid,
        F.hardtanh,
        F.softplus,
        torch.clamp,
        torch.clip,
        torch.clamp_min,
        torch.clamp_max,
        Tensor.clamp,
        Tensor.clip,
        Tensor.clamp_min,
        Tensor.clamp_max,
    }
)


class _RectifierCounter(TorchFunctionMode):
    """Counts top-level calls; calls made inside a counted function are not seen twice."""

    def __init__(self) -> None:
        super().__init__()
        self.relus = 0
        self.others: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func in _RELU_FUNCTIONS:
            self.relus += 1
        elif func in _OTHER_RECTIFIERS:
            name = getattr(func, "__name__", str(func))
            self.others[name] = self.others.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def unguided_rectifiers(model: nn.Module, example: Tensor) -> dict[str, int]:
    """Rectifier-like operations a forward pass applies outside ``nn.ReLU`` modules, by function name."""
    module_calls = 0

    def count_module_call(*_: object) -> None:
        nonlocal module_calls
        module_calls += 1

    handles = [m.register_forward_hook(count_module_call) for m in model.modules() if isinstance(m, nn.ReLU)]
    counter = _RectifierCounter()
    with counter:
        forward_with_hooks(model, example, handles)
    functional_relus = counter.relus - module_calls  # each nn.ReLU module calls F.relu once
    return counter.others | ({"relu": functional_relus} if functional_relus > 0 else {})


class GuidedBackprop(SaliencyMethod):
    name = "guided_backprop"

    def check_supported(self, model: nn.Module, example: Tensor) -> None:
        found = unguided_rectifiers(model, example)
        if found:
            listed = ", ".join(f"{count} x {name}" for name, count in sorted(found.items()))
            raise MethodUnsupportedError(
                f"{self.name}: the model applies rectifiers that are not nn.ReLU modules ({listed}); "
                "guided backpropagation overrides only nn.ReLU modules and would return plain gradients "
                "through these. Leave this method out, or use a model whose rectifiers are ReLUs."
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
        layer = self.context.gradcam_label or self.context.gradcam_layer
        return {"layer": layer, "upsampling": "bilinear", "scaling": "divide by max"}

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
        hook = modules[layer].register_forward_hook(lambda _m, _i, output: shapes.append(output.shape))
        forward_with_hooks(model, example, [hook])
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
        return self._guided.parameters() | self._cam.parameters()

    def check_supported(self, model: nn.Module, example: Tensor) -> None:
        self._guided.check_supported(model, example)
        self._cam.check_supported(model, example)

    def attribute(
        self, model: nn.Module, inputs: Tensor, target: Tensor, generator: torch.Generator
    ) -> Tensor:
        return self._guided.attribute(model, inputs, target, generator) * self._cam.attribute(
            model, inputs, target, generator
        )
