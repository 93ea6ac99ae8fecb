"""Layout and shape arithmetic: reshapes, slicing, gathering, concatenation, padding, casts, and the
shape computations that a dynamic batch dimension brings (Shape, Range, ConstantOfShape, Expand)."""

from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from onnx import NodeProto, TensorProto
from torch import Tensor

from workers.core.errors import ModelConversionError
from workers.engine.onnx_import.builder import FunctionBuilder, plain, torch_pads
from workers.engine.onnx_import.graph import Attrs, Fn
from workers.engine.onnx_import.ops.elementwise import axes_of
from workers.engine.onnx_import.prepare import describe, to_torch

if TYPE_CHECKING:
    from workers.engine.onnx_import.builder import Builder


def _identity(x: Tensor, *_: Tensor | None) -> Tensor:
    return x


def _dropout(x: Tensor, *_: Tensor | None, mask: bool) -> Tensor | tuple[Tensor, Tensor]:
    """Inference: identity (and an all-true mask when the graph asks for one)."""
    return (x, torch.ones_like(x, dtype=torch.bool)) if mask else x


def _concat(*xs: Tensor, axis: int) -> Tensor:
    return torch.cat(xs, dim=axis)


def _split(
    x: Tensor, split: Tensor | None = None, *, axis: int, parts: int, sizes: list[int] | None
) -> tuple[Tensor, ...]:
    """Explicit sizes (an input since opset 13, an attribute before), else ``parts`` chunks of
    ceil(n / parts), the last one smaller."""
    if split is not None:
        sizes = [int(s) for s in split.tolist()]
    return torch.split(x, sizes if sizes is not None else math.ceil(x.shape[axis] / parts), dim=axis)


def _transpose(x: Tensor, *, perm: list[int] | None) -> Tensor:
    return x.permute(perm if perm is not None else list(reversed(range(x.dim()))))


def _flatten(x: Tensor, *, axis: int) -> Tensor:
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def _reshape(x: Tensor, shape: Tensor, *, allowzero: int) -> Tensor:
    dims = [int(d) for d in shape.tolist()]
    if not allowzero:
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _squeeze(x: Tensor, axes: Tensor | None = None, *, attr_axes: list[int] | None) -> Tensor:
    dims = axes_of(attr_axes, axes)
    return x.squeeze() if dims is None else x.squeeze(tuple(d % x.dim() for d in dims))


def _unsqueeze(x: Tensor, axes: Tensor | None = None, *, attr_axes: list[int] | None) -> Tensor:
    dims = axes_of(attr_axes, axes) or []
    rank = x.dim() + len(dims)
    for dim in sorted(d % rank for d in dims):
        x = x.unsqueeze(dim)
    return x


def _shape(x: Tensor, *, start: int, end: int | None) -> Tensor:
    return torch.tensor(x.shape[start:end], dtype=torch.int64, device=x.device)


def _size(x: Tensor) -> Tensor:
    return torch.tensor(x.numel(), dtype=torch.int64, device=x.device)


def _gather(x: Tensor, indices: Tensor, *, axis: int) -> Tensor:
    axis %= x.dim()
    index = indices.long()
    index = torch.where(index < 0, index + x.shape[axis], index)
    picked = x.index_select(axis, index.reshape(-1))
    return picked.reshape((*x.shape[:axis], *index.shape, *x.shape[axis + 1 :]))


def _gather_elements(x: Tensor, indices: Tensor, *, axis: int) -> Tensor:
    index = indices.long()
    return torch.gather(x, axis, torch.where(index < 0, index + x.shape[axis], index))


def _gather_nd(x: Tensor, indices: Tensor, *, batch_dims: int) -> Tensor:
    """Index tuples in the last axis of ``indices`` pick slices of ``x`` after ``batch_dims`` shared axes."""
    index = indices.long()
    depth = index.shape[-1]
    batch_shape = x.shape[:batch_dims]
    batch = math.prod(batch_shape)
    flat_x = x.reshape(batch, *x.shape[batch_dims:])
    flat_index = index.reshape(batch, -1, depth)
    sizes = torch.tensor(x.shape[batch_dims : batch_dims + depth], device=x.device)
    flat_index = torch.where(flat_index < 0, flat_index + sizes, flat_index)
    picked = torch.stack(
        [flat_x[b][tuple(flat_index[b].unbind(-1))] for b in range(batch)]
    )  # [batch, tuples, *rest]
    rest = x.shape[batch_dims + depth :]
    return picked.reshape(*batch_shape, *index.shape[batch_dims:-1], *rest)


def _slice(
    x: Tensor, starts: Tensor, ends: Tensor, axes: Tensor | None = None, steps: Tensor | None = None
) -> Tensor:
    """Python's slice clamping is ONNX's: range(n)[start:end:step] gives the indices to keep."""
    start_list, end_list = starts.tolist(), ends.tolist()
    axis_list = list(range(len(start_list))) if axes is None else axes.tolist()
    step_list = [1] * len(start_list) if steps is None else steps.tolist()
    for start, end, axis, step in zip(start_list, end_list, axis_list, step_list, strict=True):
        dim = axis % x.dim()
        kept = range(x.shape[dim])[slice(start, end, step)]
        if step > 0:
            x = x[(slice(None),) * dim + (slice(kept.start, kept.stop, kept.step),)]
        else:
            x = x.index_select(dim, torch.tensor(list(kept), dtype=torch.long, device=x.device))
    return x


def _constant_of_shape(shape: Tensor, *, value: Tensor) -> Tensor:
    return torch.full(shape.tolist(), value.reshape(-1)[0].item(), dtype=value.dtype, device=shape.device)


def _range(start: Tensor, limit: Tensor, delta: Tensor) -> Tensor:
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype, device=start.device)


def _tile(x: Tensor, repeats: Tensor) -> Tensor:
    return x.repeat([int(r) for r in repeats.tolist()])


def _expand(x: Tensor, shape: Tensor) -> Tensor:
    """ONNX Expand broadcasts both ways: a 1 in ``shape`` keeps the input's size."""
    return x.expand(torch.broadcast_shapes(x.shape, tuple(int(d) for d in shape.tolist())))


def _cast(x: Tensor, *, dtype: torch.dtype) -> Tensor:
    return x.to(dtype)


def _cast_like(x: Tensor, like: Tensor) -> Tensor:
    return x.to(like.dtype)


_TORCH_DTYPES = {
    TensorProto.FLOAT: torch.float32,
    TensorProto.DOUBLE: torch.float64,
    TensorProto.FLOAT16: torch.float16,
    TensorProto.BFLOAT16: torch.bfloat16,
    TensorProto.INT64: torch.int64,
    TensorProto.INT32: torch.int32,
    TensorProto.INT8: torch.int8,
    TensorProto.UINT8: torch.uint8,
    TensorProto.BOOL: torch.bool,
}


def _cast_builder(b: Builder, node: NodeProto, attrs: Attrs) -> Fn:
    if attrs["to"] not in _TORCH_DTYPES:
        raise ModelConversionError(f"{describe(node)}: cast to {TensorProto.DataType.Name(attrs['to'])}")
    return partial(_cast, dtype=_TORCH_DTYPES[attrs["to"]])


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


def _pad(
    x: Tensor, pads: Tensor, value: Tensor | None = None, axes: Tensor | None = None, *, mode: str
) -> Tensor:
    rank = x.dim()
    axis_list = list(range(rank)) if axes is None else [int(a) % rank for a in axes.tolist()]
    amounts = [int(p) for p in pads.tolist()]
    begin = dict(zip(axis_list, amounts[: len(axis_list)], strict=True))
    end = dict(zip(axis_list, amounts[len(axis_list) :], strict=True))
    padding = torch_pads([begin.get(d, 0) for d in range(rank)], [end.get(d, 0) for d in range(rank)])
    while padding[-2:] == [0, 0]:  # F.pad's reflect/replicate modes only take trailing dims
        padding = padding[:-2]
    if not padding:
        return x
    if mode != "constant":
        return F.pad(x, padding, mode=_PAD_MODES[mode])
    fill = 0.0 if value is None or value.numel() == 0 else value.item()
    return F.pad(x, padding, value=fill)


def _pad_builder(b: Builder, node: NodeProto, attrs: Attrs) -> Fn:
    mode = attrs.get("mode", "constant")
    if mode not in _PAD_MODES:
        raise ModelConversionError(f"{describe(node)}: pad mode {mode!r} is not supported")
    return partial(_pad, mode=mode)


def _split_builder(b: Builder, node: NodeProto, attrs: Attrs) -> Fn:
    parts = attrs.get("num_outputs", len(node.output))
    return partial(_split, axis=attrs.get("axis", 0), parts=parts, sizes=attrs.get("split"))


FUNCTIONS: dict[str, FunctionBuilder] = {
    "Identity": plain(_identity),
    "CastLike": plain(_cast_like),
    "Expand": plain(_expand),
    "Tile": plain(_tile),
    "Slice": plain(_slice),
    "Range": plain(_range),
    "Size": plain(_size),
    "Dropout": lambda b, node, a: partial(_dropout, mask=len(node.output) > 1 and bool(node.output[1])),
    "Concat": lambda b, node, a: partial(_concat, axis=a["axis"]),
    "Split": _split_builder,
    "Transpose": lambda b, node, a: partial(_transpose, perm=a.get("perm")),
    "Flatten": lambda b, node, a: partial(_flatten, axis=a.get("axis", 1)),
    "Reshape": lambda b, node, a: partial(_reshape, allowzero=a.get("allowzero", 0)),
    "Squeeze": lambda b, node, a: partial(_squeeze, attr_axes=a.get("axes")),
    "Unsqueeze": lambda b, node, a: partial(_unsqueeze, attr_axes=a.get("axes")),
    "Shape": lambda b, node, a: partial(_shape, start=a.get("start", 0), end=a.get("end")),
    "Gather": lambda b, node, a: partial(_gather, axis=a.get("axis", 0)),
    "GatherElements": lambda b, node, a: partial(_gather_elements, axis=a.get("axis", 0)),
    "GatherND": lambda b, node, a: partial(_gather_nd, batch_dims=a.get("batch_dims", 0)),
    "ConstantOfShape": lambda b, node, a: partial(
        _constant_of_shape, value=to_torch(a["value"]) if "value" in a else torch.zeros(1)
    ),
    "Cast": _cast_builder,
    "Pad": _pad_builder,
}
