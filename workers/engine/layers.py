"""Which layers the randomization tests re-initialize, in which order, and how.

Order comes from forward execution (hooks on one forward pass), not from module registration order,
which need not match the data flow. Only modules holding parameters of their own count as layers.
"""

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from workers.engine.errors import AuditInputError
from workers.engine.settings import ReinitScheme


@dataclass(frozen=True)
class Layer:
    index: int  # forward execution order
    path: str  # module path inside the model (``named_modules`` key)
    name: str  # what a reader sees: the name the artifact gave the layer's weights
    kind: str
    parameters: int


def forward_with_hooks(model: nn.Module, example: Tensor, handles: list[RemovableHandle]) -> None:
    """Run one no-grad forward pass for the hooks' sake, then remove them whatever happens."""
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()


def _has_own_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def layers_in_forward_order(
    model: nn.Module, example: Tensor, names: dict[str, str] | None = None
) -> list[Layer]:
    """Parametrized modules in the order a forward pass on ``example`` first runs them."""
    order: list[str] = []
    handles = []
    for path, module in model.named_modules():
        if _has_own_parameters(module):

            def record(*_: object, path: str = path) -> None:
                if path not in order:
                    order.append(path)

            handles.append(module.register_forward_hook(record))
    forward_with_hooks(model, example, handles)
    if not order:
        raise AuditInputError("the model has no layers with parameters: there is nothing to randomize")
    modules = dict(model.named_modules())
    return [
        Layer(
            index=index,
            path=path,
            name=(names or {}).get(path, path),
            kind=type(modules[path]).__name__,
            parameters=sum(p.numel() for p in modules[path].parameters(recurse=False)),
        )
        for index, path in enumerate(order)
    ]


def last_conv2d(model: nn.Module, layers: list[Layer]) -> str | None:
    """GradCAM's default layer: the last 2-D convolution to run."""
    modules = dict(model.named_modules())
    convs = [layer.path for layer in layers if isinstance(modules[layer.path], nn.Conv2d)]
    return convs[-1] if convs else None


def gradcam_default_layer(model: nn.Module, layers: list[Layer], example: Tensor) -> str | None:
    """The last 2-D convolution's activations as Grad-CAM reads them: after the ReLU that follows it.

    Grad-CAM weighs the rectified feature maps of the last convolutional layer (Keras-style layers
    include their activation). Where the convolution's output goes straight into an ``nn.ReLU``, that
    module is read; otherwise the convolution itself.
    """
    conv_path = last_conv2d(model, layers)
    if conv_path is None:
        return None
    modules = dict(model.named_modules())
    conv_outputs: list[Tensor] = []
    rectifier: list[str] = []

    def record_conv(_: nn.Module, __: object, output: Tensor) -> None:
        conv_outputs.append(output)

    handles = [modules[conv_path].register_forward_hook(record_conv)]
    for path, module in modules.items():
        if isinstance(module, nn.ReLU):

            def record_relu(_: nn.Module, inputs: tuple[Tensor, ...], path: str = path) -> None:
                if conv_outputs and inputs[0] is conv_outputs[-1] and not rectifier:
                    rectifier.append(path)

            handles.append(module.register_forward_pre_hook(record_relu))
    forward_with_hooks(model, example, handles)
    return rectifier[0] if rectifier else conv_path


def layer_seed(seed: int, layer: Layer, draw: int = 0) -> int:
    """One seed per layer and draw: within a draw a layer gets the same new weights in both tests."""
    return int(np.random.SeedSequence([seed, draw, layer.index]).generate_state(1)[0])


@torch.no_grad()
def reinitialize(module: nn.Module, scheme: ReinitScheme, std: float, seed: int) -> None:
    """Re-initialize ``module``'s own parameters, drawn on the CPU so any device gives the same weights."""
    fresh = copy.deepcopy(module).cpu()
    if scheme is ReinitScheme.default:
        reset = getattr(fresh, "reset_parameters", None)
        if reset is None:
            raise AuditInputError(
                f"layer type {type(module).__name__} has no default initializer; use reinit 'normal'"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            reset()
    else:
        generator = torch.Generator().manual_seed(seed)
        for parameter in fresh.parameters(recurse=False):
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    module.load_state_dict(fresh.state_dict())
