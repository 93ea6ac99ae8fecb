"""Max, average and global pooling as torch functions; pads torch cannot take become explicit padding."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from onnx import NodeProto
from torch import Tensor

from workers.core.errors import ModelConversionError
from workers.engine.onnx_import.builder import plain, torch_pads
from workers.engine.onnx_import.graph import Attrs, Fn
from workers.engine.onnx_import.prepare import describe

if TYPE_CHECKING:
    from workers.engine.onnx_import.builder import Builder

_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _max_pool(
    x: Tensor, *, kernel: list[int], stride: list[int], padding: list[int], dilation: list[int],
    ceil_mode: bool, pre_pad: list[int] | None,
) -> Tensor:  # fmt: skip
    if pre_pad is not None:
        x = F.pad(x, pre_pad, value=-math.inf)
    return _MAX_POOL[len(kernel)](x, kernel, stride, padding, dilation, ceil_mode=ceil_mode)


def _avg_pool(
    x: Tensor, *, kernel: list[int], stride: list[int], padding: list[int], ceil_mode: bool,
    count_include_pad: bool, pre_pad: list[int] | None,
) -> Tensor:  # fmt: skip
    pool = partial(_AVG_POOL[len(kernel)], kernel_size=kernel, stride=stride, ceil_mode=ceil_mode)
    if pre_pad is None:
        return pool(x, padding=padding, count_include_pad=count_include_pad)
    if count_include_pad:
        return pool(F.pad(x, pre_pad))
    # Pads torch cannot express: divide by the pooled count of real (unpadded) elements instead.
    ones = torch.ones_like(x[:1, :1])
    return pool(F.pad(x, pre_pad)) / pool(F.pad(ones, pre_pad))


def _pool_geometry(b: Builder, node: NodeProto, attrs: Attrs) -> Attrs:
    """Kernel, stride and padding; pads torch pooling cannot take (asymmetric or over half the kernel)
    become an explicit pre-padding."""
    if len(node.output) > 1 and node.output[1]:
        raise ModelConversionError(f"{describe(node)}: the Indices output is not supported")
    kernel = list(attrs["kernel_shape"])
    spatial = len(kernel)
    if spatial not in _MAX_POOL:
        raise ModelConversionError(f"{describe(node)}: {spatial}-d pooling is not supported")
    begin, end = b.pads(node, attrs, kernel)
    native = begin == end and all(p <= k // 2 for p, k in zip(begin, kernel, strict=True))
    return {
        "kernel": kernel,
        "stride": list(attrs.get("strides", [1] * spatial)),
        "padding": begin if native else [0] * spatial,
        "ceil_mode": bool(attrs.get("ceil_mode", 0)),
        "pre_pad": None if native else torch_pads(begin, end),
    }


def _max_pool_builder(b: Builder, node: NodeProto, attrs: Attrs) -> Fn:
    geometry = _pool_geometry(b, node, attrs)
    dilation = list(attrs.get("dilations", [1] * len(geometry["kernel"])))
    return partial(_max_pool, dilation=dilation, **geometry)


def _avg_pool_builder(b: Builder, node: NodeProto, attrs: Attrs) -> Fn:
    if any(d != 1 for d in attrs.get("dilations", [])):
        raise ModelConversionError(f"{describe(node)}: dilated average pooling is not supported")
    geometry = _pool_geometry(b, node, attrs)
    return partial(_avg_pool, count_include_pad=bool(attrs.get("count_include_pad", 0)), **geometry)


def _global_pool(x: Tensor, *, op: Callable[..., Tensor]) -> Tensor:
    return op(x, dim=tuple(range(2, x.dim())), keepdim=True)


FUNCTIONS = {
    "MaxPool": _max_pool_builder,
    "AveragePool": _avg_pool_builder,
    "GlobalAveragePool": plain(partial(_global_pool, op=torch.mean)),
    "GlobalMaxPool": plain(partial(_global_pool, op=torch.amax)),
}
