"""Conv and ConvTranspose: torch convolution layers. Per-channel affine maps reading only a Conv (a
BatchNormalization, or tf2onnx's Mul and Add) are folded into it, as the TorchScript-based exporter does,
so every exporter gives the same layers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from onnx import NodeProto
from torch import Tensor, nn

from workers.core.errors import ModelConversionError
from workers.engine.onnx_import.builder import with_parameters
from workers.engine.onnx_import.graph import Attrs
from workers.engine.onnx_import.input_gradient import Conv2d
from workers.engine.onnx_import.prepare import attributes, describe

if TYPE_CHECKING:
    from workers.engine.onnx_import.builder import Builder

_CONV = {1: nn.Conv1d, 2: Conv2d, 3: nn.Conv3d}
_CONV_TRANSPOSE = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


def _affine_after(
    b: Builder, value: str, channels: int, spatial: int
) -> tuple[NodeProto, Tensor, Tensor] | None:
    """The node that reads only ``value`` (a conv's [N, C, ...] output) and applies a per-channel affine
    map to it, with that map's factor and shift per channel (float64); None when there is none.

    Exporters spell an inference-mode batch norm as BatchNormalization, or as Mul then Add (tf2onnx), or as
    Sub then Div; each is exact to fold.
    """
    node = b.sole_reader(value, "BatchNormalization", "Mul", "Div", "Add", "Sub")
    if node is None:
        return None
    if node.op_type == "BatchNormalization":
        attrs = attributes(node)
        if (
            any(name not in b.consts for name in node.input[1:5])
            or any(b.is_read(name) for name in node.output[1:] if name)
            or attrs.get("training_mode", 0)
        ):
            return None
        scale, shift, mean, var = (b.consts[name].double() for name in node.input[1:5])
        factor = scale / torch.sqrt(var + attrs.get("epsilon", 1e-5))
        return node, factor, shift - mean * factor
    if len(node.input) != 2:
        return None
    position = list(node.input).index(value) if value in node.input else -1
    other = node.input[1 - position] if position in (0, 1) else ""
    if other not in b.consts or (position == 1 and node.op_type in ("Div", "Sub")):
        return None
    per_channel = _per_channel(b.consts[other], channels, spatial)
    if per_channel is None:
        return None
    ones, zeros = torch.ones(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64)
    return {
        "Mul": (node, per_channel, zeros),
        "Div": (node, 1.0 / per_channel, zeros),
        "Add": (node, ones, per_channel),
        "Sub": (node, ones, -per_channel),
    }[node.op_type]


def _per_channel(const: Tensor, channels: int, spatial: int) -> Tensor | None:
    """``const`` as one float64 value per channel when it broadcasts that way against [N, C, ...]."""
    if not const.is_floating_point() or const.dim() > spatial + 2:
        return None
    if const.numel() == 1:
        return const.double().reshape(1).expand(channels).clone()
    shape = list(const.shape)
    if len(shape) == spatial + 2 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != spatial + 1 or shape[0] != channels or any(d != 1 for d in shape[1:]):
        return None
    return const.double().reshape(channels)


def _folded_affines(
    b: Builder, node: NodeProto, weight: Tensor, bias: Tensor | None
) -> tuple[Tensor, Tensor | None, str, tuple[str, ...]]:
    """Weight, bias, output and parameter names of the conv with every per-channel affine map after it
    folded in (exact in real arithmetic), so that the layer list does not depend on how an exporter
    spelled a batch norm, nor on its values."""
    output, params = node.output[0], tuple(node.input[1:])
    channels, spatial = weight.shape[0], weight.dim() - 2
    factor = torch.ones(channels, dtype=torch.float64)
    shift = bias.double() if bias is not None else torch.zeros(channels, dtype=torch.float64)
    folded = False
    while (affine := _affine_after(b, output, channels, spatial)) is not None:
        reader, scale, offset = affine
        factor, shift = factor * scale, shift * scale + offset
        b.fused.add(reader.output[0])
        params = (*params, reader.op_type, *(name for name in reader.input if name != output))
        output, folded = reader.output[0], True
    if not folded:
        return weight, bias, output, params
    folded_weight = weight.double() * factor.reshape(-1, *([1] * (weight.dim() - 1)))
    return folded_weight.float(), shift.float(), output, params


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
    weight, bias, output, params = _folded_affines(b, node, weight, bias)

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
