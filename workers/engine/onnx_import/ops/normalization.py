"""Normalization layers: BatchNormalization that no convolution absorbs, LayerNormalization,
GroupNormalization and InstanceNormalization, each a torch module whose affine is a parameter group; and
a batch norm spelled as a constant Mul then Add (tf2onnx) that no convolution absorbs, a ChannelAffine."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from onnx import NodeProto
from torch import Tensor, nn

from workers.core.errors import ModelConversionError
from workers.engine.onnx_import.builder import parameter, with_parameters
from workers.engine.onnx_import.graph import Attrs
from workers.engine.onnx_import.prepare import describe

if TYPE_CHECKING:
    from workers.engine.onnx_import.builder import Builder

_BATCH_NORM = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


class BatchNormAnyRank(nn.modules.batchnorm._BatchNorm):
    """Batch normalization of an input whose rank shape inference cannot tell (e.g. after a Reshape
    computed from Shape in old opsets); ``F.batch_norm`` itself takes any rank from 2 on."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of rank 2 or more, got rank {input.dim()}")


class InstanceNormalization(nn.Module):
    """Per-sample, per-channel normalization of an [N, C, ...] input of any rank, with a learned affine."""

    def __init__(self, weight: Tensor, bias: Tensor, eps: float) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = parameter(weight), parameter(bias), eps

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)


class ChannelAffine(nn.Module):
    """``x * weight + bias`` with one value per channel in each: an inference-mode batch norm as tf2onnx
    writes it where no convolution comes before it, made one normalization layer (not two anonymous learned
    tensors) so that it is re-initialized as every other normalization."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.weight, self.bias = parameter(weight), parameter(bias)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight + self.bias


def channel_affine(b: Builder, node: NodeProto, attrs: Attrs) -> None:
    """A Mul by a per-channel constant whose only reader adds (or subtracts) one of the same shape: one
    ChannelAffine layer. Anything else is the elementwise product: scalars (a hard sigmoid's 1/6 and 0.5),
    constants over more than one axis (an attention bias), and the input's own scaling."""
    constant = next((name for name in node.input if name in b.consts), None)
    data = next((name for name in node.input if name not in b.consts), None)
    shift = b.sole_reader(node.output[0], "Add", "Sub")
    offset = next((name for name in shift.input if name in b.consts), None) if shift is not None else None
    if (
        constant is None
        or data is None
        or b.scales_input(node)
        or shift is None
        or offset is None
        or (shift.op_type == "Sub" and shift.input[1] != offset)
        or not _along_one_axis(b.consts[constant])
        or b.consts[offset].shape != b.consts[constant].shape
        or not b.consts[offset].is_floating_point()
    ):
        b.add_function(node, b.function_builders[node.op_type](b, node, attrs))
        return
    weight, bias = b.consts[constant], b.consts[offset]
    bias = -bias if shift.op_type == "Sub" else bias
    b.fused.add(shift.output[0])
    b.add_module(
        node,
        lambda: ChannelAffine(weight, bias),
        data,
        shift.output[0],
        (constant, offset, shift.op_type),
        attrs,
    )


def _along_one_axis(const: Tensor) -> bool:
    """Float, at least two values, all along one axis: ``[C]``, ``[C, 1, 1]``, ``[1, C, 1, 1]``..."""
    sizes = [size for size in const.shape if size != 1]
    return const.is_floating_point() and len(sizes) == 1 and sizes[0] >= 2


def _no_extra_outputs(b: Builder, node: NodeProto) -> None:
    """Statistics outputs that no node reads (some exporters list them) are left out; read ones refused."""
    if any(b.is_read(name) for name in node.output[1:] if name):
        raise ModelConversionError(f"{describe(node)}: the saved mean and variance outputs are not supported")


def batch_norm(b: Builder, node: NodeProto, attrs: Attrs) -> None:
    if attrs.get("training_mode", 0):
        raise ModelConversionError(f"{describe(node)}: training-mode batch normalization is not supported")
    _no_extra_outputs(b, node)
    scale, shift, mean, var = (
        b.const(node, i, what) for i, what in enumerate(("scale", "B", "mean", "var"), 1)
    )
    rank = len(b.shapes.get(node.input[0], ()))
    if rank > max(_BATCH_NORM):
        raise ModelConversionError(f"{describe(node)}: batch normalization of rank {rank}")

    def make() -> nn.Module:
        kind = _BATCH_NORM.get(rank, BatchNormAnyRank)
        norm = kind(scale.shape[0], eps=attrs.get("epsilon", 1e-5), device="meta")
        with_parameters(norm, scale, shift)
        norm.running_mean = mean.detach().float().clone()
        norm.running_var = var.detach().float().clone()
        norm.num_batches_tracked = torch.tensor(0)
        return norm.eval()

    b.add_module(node, make, node.input[0], node.output[0], tuple(node.input[1:]), attrs)


def layer_norm(b: Builder, node: NodeProto, attrs: Attrs) -> None:
    """LayerNormalization over the trailing axes from ``axis`` on; its scale must cover all of them."""
    _no_extra_outputs(b, node)
    scale = b.const(node, 1, "scale")
    bias = b.optional_const(node, 2, "bias")
    axis = attrs.get("axis", -1)
    rank = len(b.shapes.get(node.input[0], ()))
    normalized = -axis if axis < 0 else (rank - axis if rank else None)
    if normalized != scale.dim():
        raise ModelConversionError(
            f"{describe(node)}: the scale of shape {list(scale.shape)} does not span the normalized axes "
            f"(axis {axis}); only a full per-element affine is supported"
        )
    shift = bias.expand(scale.shape) if bias is not None else None

    def make() -> nn.Module:
        eps = attrs.get("epsilon", 1e-5)
        norm = nn.LayerNorm(tuple(scale.shape), eps=eps, bias=shift is not None, device="meta")
        return with_parameters(norm, scale, shift)

    b.add_module(node, make, node.input[0], node.output[0], tuple(node.input[1:]), attrs)


def group_norm(b: Builder, node: NodeProto, attrs: Attrs) -> None:
    """GroupNormalization-21, one scale per channel as torch has it (the checker refuses opset 18's)."""
    scale, bias = b.const(node, 1, "scale"), b.const(node, 2, "bias")
    groups = attrs["num_groups"]
    shape = b.shapes.get(node.input[0], ())
    channels = shape[1] if len(shape) > 1 else None
    if channels is None:
        raise ModelConversionError(f"{describe(node)}: the input's channel count is not known")

    def make() -> nn.Module:
        norm = nn.GroupNorm(groups, channels, eps=attrs.get("epsilon", 1e-5), device="meta")
        return with_parameters(norm, scale, bias)

    b.add_module(node, make, node.input[0], node.output[0], tuple(node.input[1:]), attrs)


def instance_norm(b: Builder, node: NodeProto, attrs: Attrs) -> None:
    scale, bias = b.const(node, 1, "scale"), b.const(node, 2, "B")
    eps = attrs.get("epsilon", 1e-5)
    b.add_module(
        node,
        lambda: InstanceNormalization(scale, bias, eps),
        node.input[0],
        node.output[0],
        tuple(node.input[1:]),
        attrs,
    )


MODULES = {
    "Mul": channel_affine,
    "BatchNormalization": batch_norm,
    "LayerNormalization": layer_norm,
    "GroupNormalization": group_norm,
    "InstanceNormalization": instance_norm,
}
