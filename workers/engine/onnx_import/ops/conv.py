"""Conv and ConvTranspose: torch convolution layers; a BatchNormalization reading only a Conv is folded
into it, as the TorchScript-based exporter does, so both ONNX exporters give the same layers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from onnx import NodeProto
from torch import Tensor, nn

from workers.engine.errors import ModelConversionError
from workers.engine.onnx_import.builder import with_parameters
from workers.engine.onnx_import.graph import Attrs
from workers.engine.onnx_import.input_gradient import Conv2d
from workers.engine.onnx_import.prepare import describe

if TYPE_CHECKING:
    from workers.engine.onnx_import.builder import Builder

_CONV = {1: nn.Conv1d, 2: Conv2d, 3: nn.Conv3d}
_CONV_TRANSPOSE = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


def _folded_batch_norm(
    b: Builder, node: NodeProto, weight: Tensor, bias: Tensor | None
) -> tuple[Tensor, Tensor | None, str, tuple[str, ...]]:
    """Weight, bias, output and parameter names of the conv with the batch norm after it folded in (exact
    in real arithmetic: an eval-mode batch norm is a per-channel affine map)."""
    norm = b.sole_reader(node.output[0], "BatchNormalization")
    if norm is None or any(name not in b.consts for name in norm.input[1:5]):
        return weight, bias, node.output[0], tuple(node.input[1:])
    scale, shift, mean, var = (b.consts[name].double() for name in norm.input[1:5])
    epsilon = next((a.f for a in norm.attribute if a.name == "epsilon"), 1e-5)
    factor = scale / torch.sqrt(var + epsilon)
    folded_weight = weight.double() * factor.reshape(-1, *([1] * (weight.dim() - 1)))
    folded_bias = ((bias.double() if bias is not None else 0.0) - mean) * factor + shift
    b.fused.add(norm.output[0])
    params = (*node.input[1:], *norm.input[1:5])
    return folded_weight.float(), folded_bias.float(), norm.output[0], params


def conv(b: Builder, node: NodeProto, attrs: Attrs) -> None:
    weight = b.const(node, 1, "weight")
    bias = b.optional_const(node, 2, "bias")
    spatial = weight.dim() - 2
    if spatial not in _CONV:
        raise ModelConversionError(f"{describe(node)}: {spatial}-d convolutions are not supported")
    group = attrs.get("group", 1)
    dilations = list(attrs.get("dilations", [1] * spatial))
    begin, end = b.pads(node, attrs, list(weight.shape[2:]))
    data = b.padded_input(node, begin, end, 0.0)
    weight, bias, output, params = _folded_batch_norm(b, node, weight, bias)

    def make() -> nn.Module:
        layer = _CONV[spatial](
            weight.shape[1] * group,
            weight.shape[0],
            tuple(weight.shape[2:]),
            stride=tuple(attrs.get("strides", [1] * spatial)),
            padding=tuple(begin if begin == end else [0] * spatial),
            dilation=tuple(dilations),
            groups=group,
            bias=bias is not None,
            device="meta",
        )
        return with_parameters(layer, weight, bias)

    b.add_module(node, make, data, output, params, attrs)


def conv_transpose(b: Builder, node: NodeProto, attrs: Attrs) -> None:
    weight = b.const(node, 1, "weight")
    bias = b.optional_const(node, 2, "bias")
    spatial = weight.dim() - 2
    pads = list(attrs.get("pads", [0] * 2 * spatial))
    if spatial not in _CONV_TRANSPOSE or pads[:spatial] != pads[spatial:]:
        raise ModelConversionError(f"{describe(node)}: only 1-3d transposed convolutions with symmetric pads")
    if attrs.get("auto_pad", "NOTSET") != "NOTSET" or "output_shape" in attrs:
        raise ModelConversionError(f"{describe(node)}: auto_pad and output_shape are not supported; use pads")
    group = attrs.get("group", 1)

    def make() -> nn.Module:
        layer = _CONV_TRANSPOSE[spatial](
            weight.shape[0],
            weight.shape[1] * group,
            tuple(weight.shape[2:]),
            stride=tuple(attrs.get("strides", [1] * spatial)),
            padding=tuple(pads[:spatial]),
            output_padding=tuple(attrs.get("output_padding", [0] * spatial)),
            groups=group,
            bias=bias is not None,
            dilation=tuple(attrs.get("dilations", [1] * spatial)),
            device="meta",
        )
        return with_parameters(layer, weight, bias)

    b.add_module(node, make, node.input[0], node.output[0], tuple(node.input[1:]), attrs)


MODULES = {"Conv": conv, "ConvTranspose": conv_transpose}
