"""Gemm and MatMul: a product with a constant weight is an ``nn.Linear``; a product of two activations
(attention scores and their application to values) stays a function."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from onnx import NodeProto
from torch import Tensor, nn

from workers.core.errors import ModelConversionError
from workers.engine.onnx_import.builder import with_parameters
from workers.engine.onnx_import.graph import Attrs
from workers.engine.onnx_import.prepare import describe

if TYPE_CHECKING:
    from workers.engine.onnx_import.builder import Builder


def _linear(weight: Tensor, bias: Tensor | None) -> nn.Module:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    return with_parameters(layer, weight, bias)


def gemm(b: Builder, node: NodeProto, attrs: Attrs) -> None:
    """Gemm with a constant B is a Linear layer; alpha and beta are folded into its weight and bias."""
    if attrs.get("transA", 0):
        raise ModelConversionError(f"{describe(node)}: transA=1 is not supported")
    weight = b.const(node, 1, "weight B")
    weight = weight if attrs.get("transB", 0) else weight.T
    c = b.optional_const(node, 2, "bias C")
    out_features = weight.shape[0]
    bias = None
    if c is not None:
        if c.dim() > 2 or (c.dim() == 2 and c.shape[0] != 1) or c.numel() not in (1, out_features):
            raise ModelConversionError(f"{describe(node)}: bias C of shape {list(c.shape)} varies per row")
        bias = c.reshape(-1).expand(out_features) * attrs.get("beta", 1.0)
    scaled = weight * attrs.get("alpha", 1.0)
    b.add_module(
        node, lambda: _linear(scaled, bias), node.input[0], node.output[0], tuple(node.input[1:]), attrs
    )


def matmul(b: Builder, node: NodeProto, attrs: Attrs) -> None:
    """MatMul by a constant 2-D weight is a Linear layer, taking the bias of an Add that follows alone."""
    a_name, b_name = node.input
    if a_name in b.consts and b_name not in b.consts:
        raise ModelConversionError(f"{describe(node)}: a constant left operand is not supported")
    if b_name not in b.consts or a_name in b.consts:  # two activations, or a constant product to fold
        b.add_function(node, torch.matmul)
        return
    weight = b.consts[b_name]
    if weight.dim() != 2:
        raise ModelConversionError(f"{describe(node)}: MatMul by a constant of rank {weight.dim()}")
    output, params, bias = node.output[0], (b_name,), None
    follower = _bias_add(b, node, weight.shape[1])
    if follower is not None:
        add, bias_name = follower
        output, params, bias = add.output[0], (b_name, bias_name), b.consts[bias_name]
        b.fused.add(output)
    b.add_module(node, lambda: _linear(weight.T, bias), a_name, output, params)


def _bias_add(b: Builder, node: NodeProto, out_features: int) -> tuple[NodeProto, str] | None:
    """The Add after a MatMul, if it adds a constant 1-D bias and nothing else reads the product."""
    add = b.sole_reader(node.output[0], "Add")
    if add is None:
        return None
    other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
    bias = b.consts.get(other)
    if bias is None or bias.dim() != 1 or bias.shape[0] != out_features:
        return None
    return add, other


MODULES = {"Gemm": gemm, "MatMul": matmul}
