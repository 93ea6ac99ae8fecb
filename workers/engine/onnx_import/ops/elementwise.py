"""Arithmetic, comparisons, logic and reductions: parameter-free torch functions."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import torch
from onnx import NodeProto
from torch import Tensor

from workers.engine.onnx_import.builder import FunctionBuilder, plain
from workers.engine.onnx_import.graph import Attrs

if TYPE_CHECKING:
    from workers.engine.onnx_import.builder import Builder


def _div(a: Tensor, b: Tensor) -> Tensor:
    if a.is_floating_point() or b.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


def _pow(a: Tensor, b: Tensor) -> Tensor:
    return torch.pow(a, b).to(a.dtype)


def _mod(a: Tensor, b: Tensor, *, fmod: int) -> Tensor:
    """ONNX Mod: integer modulo takes the divisor's sign (Python's), ``fmod=1`` the dividend's (C's)."""
    return torch.fmod(a, b) if fmod else torch.remainder(a, b)


def _variadic(op: Callable[[Tensor, Tensor], Tensor]) -> Callable[..., Tensor]:
    def apply(*xs: Tensor) -> Tensor:
        result = xs[0]
        for x in xs[1:]:
            result = op(result, x)
        return result

    return apply


def _where(condition: Tensor, x: Tensor, y: Tensor) -> Tensor:
    return torch.where(condition.bool(), x, y)


def axes_of(attr_axes: list[int] | None, axes: Tensor | None) -> list[int] | None:
    """Axes came as an attribute before opset 13 (18 for most reductions) and as an input since."""
    if attr_axes is not None:
        return list(attr_axes)
    return None if axes is None else [int(a) for a in axes.tolist()]


def _reduce(
    x: Tensor,
    axes: Tensor | None = None,
    *,
    op: Callable[..., Tensor],
    attr_axes: list[int] | None,
    keepdims: int,
    noop_with_empty_axes: int,
) -> Tensor:
    dims = axes_of(attr_axes, axes)
    if not dims:
        if noop_with_empty_axes:
            return x
        dims = list(range(x.dim()))
    return op(x, dim=tuple(d % x.dim() for d in dims), keepdim=bool(keepdims))


def _prod(x: Tensor, *, dim: tuple[int, ...], keepdim: bool) -> Tensor:
    for d in sorted(dim, reverse=True):
        x = torch.prod(x, dim=d, keepdim=keepdim)
    return x


def _reduce_builder(op: Callable[..., Tensor]) -> FunctionBuilder:
    def build(b: Builder, node: NodeProto, attrs: Attrs) -> Callable[..., Tensor]:
        return partial(
            _reduce,
            op=op,
            attr_axes=attrs.get("axes"),
            keepdims=attrs.get("keepdims", 1),
            noop_with_empty_axes=attrs.get("noop_with_empty_axes", 0),
        )

    return build


def _arg_reduce(x: Tensor, *, op: Callable[..., Tensor], axis: int, keepdims: int, last: int) -> Tensor:
    """``select_last_index=1``: the last position of a tied extreme, found on the reversed axis."""
    if not last:
        return op(x, dim=axis, keepdim=bool(keepdims))
    flipped = op(torch.flip(x, (axis,)), dim=axis, keepdim=bool(keepdims))
    return x.shape[axis] - 1 - flipped


def _arg_builder(op: Callable[..., Tensor]) -> FunctionBuilder:
    def build(b: Builder, node: NodeProto, attrs: Attrs) -> Callable[..., Tensor]:
        return partial(
            _arg_reduce,
            op=op,
            axis=attrs.get("axis", 0),
            keepdims=attrs.get("keepdims", 1),
            last=attrs.get("select_last_index", 0),
        )

    return build


FUNCTIONS: dict[str, FunctionBuilder] = {
    "Add": plain(torch.add),
    "Sub": plain(torch.sub),
    "Mul": plain(torch.mul),
    "Div": plain(_div),
    "Pow": plain(_pow),
    "Neg": plain(torch.neg),
    "Exp": plain(torch.exp),
    "Log": plain(torch.log),
    "Sqrt": plain(torch.sqrt),
    "Abs": plain(torch.abs),
    "Sign": plain(torch.sign),
    "Erf": plain(torch.erf),
    "Reciprocal": plain(torch.reciprocal),
    "Floor": plain(torch.floor),
    "Ceil": plain(torch.ceil),
    "Round": plain(torch.round),
    "Sin": plain(torch.sin),
    "Cos": plain(torch.cos),
    "Max": plain(_variadic(torch.maximum)),
    "Min": plain(_variadic(torch.minimum)),
    "Sum": plain(_variadic(torch.add)),
    "Mod": lambda b, node, a: partial(_mod, fmod=a.get("fmod", 0)),
    "Equal": plain(torch.eq),
    "Less": plain(torch.lt),
    "LessOrEqual": plain(torch.le),
    "Greater": plain(torch.gt),
    "GreaterOrEqual": plain(torch.ge),
    "Not": plain(torch.logical_not),
    "And": plain(torch.logical_and),
    "Or": plain(torch.logical_or),
    "Xor": plain(torch.logical_xor),
    "IsNaN": plain(torch.isnan),
    "Where": plain(_where),
    "ReduceMean": _reduce_builder(torch.mean),
    "ReduceSum": _reduce_builder(torch.sum),
    "ReduceMax": _reduce_builder(torch.amax),
    "ReduceMin": _reduce_builder(torch.amin),
    "ReduceProd": _reduce_builder(_prod),
    "ArgMax": _arg_builder(torch.argmax),
    "ArgMin": _arg_builder(torch.argmin),
}
