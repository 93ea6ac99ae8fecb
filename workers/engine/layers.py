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

from workers.core.audit_settings import ReinitScheme
from workers.core.errors import AuditInputError
from workers.engine.onnx_import.ops.normalization import ChannelAffine, InstanceNormalization


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


def has_own_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def layers_in_forward_order(
    model: nn.Module, example: Tensor, names: dict[str, str] | None = None
) -> list[Layer]:
    """Parametrized modules in the order a forward pass on ``example`` first runs them."""
    order: list[str] = []
    handles = []
    for path, module in model.named_modules():
        if has_own_parameters(module):

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


def layer_seed(seed: int, layer: Layer, draw: int = 0) -> int:
    """One seed per layer and draw: within a draw a layer gets the same new weights in both tests."""
    return int(np.random.SeedSequence([seed, draw, layer.index]).generate_state(1)[0])


NORMALIZATIONS = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    InstanceNormalization,
    ChannelAffine,
)


@torch.no_grad()
def reinitialize(module: nn.Module, scheme: ReinitScheme, std: float, seed: int) -> None:
    """Re-initialize ``module``'s own parameters, drawn on the CPU so any device gives the same weights.

    A normalization layer's default initializer (scale 1, shift 0) would turn it into the identity, a
    stage that only removes normalization: its scale is drawn from U(0, 1) instead (torch's BatchNorm
    initializer before 1.2) and its shift set to 0, so the function really changes.
    """
    fresh = copy.deepcopy(module).cpu()
    if scheme is ReinitScheme.default and isinstance(fresh, NORMALIZATIONS):
        generator = torch.Generator().manual_seed(seed)
        fresh.weight.copy_(torch.rand(fresh.weight.shape, generator=generator))
        if fresh.bias is not None:
            fresh.bias.zero_()
    elif scheme is ReinitScheme.default:
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
