"""Nonlinearities. Each one that torch has a module for becomes its own module per node, so hooks and
Guided Backprop see every one; the rest are functions (the Guided Backprop guard reads the graph)."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from onnx import NodeProto
from torch import Tensor, nn

from workers.engine.onnx_import.builder import ModuleBuilder, plain
from workers.engine.onnx_import.graph import Attrs

if TYPE_CHECKING:
    from workers.engine.onnx_import.builder import Builder


def _activation(make: Callable[[Attrs], nn.Module]) -> ModuleBuilder:
    def build(b: Builder, node: NodeProto, attrs: Attrs) -> None:
        b.add_module(node, lambda: make(attrs), node.input[0], node.output[0])

    return build


def _softmax_coerced(x: Tensor, *, axis: int, log: bool) -> Tensor:
    flat = x.reshape(math.prod(x.shape[: axis % x.dim()]), -1)
    return (F.log_softmax(flat, dim=1) if log else F.softmax(flat, dim=1)).reshape(x.shape)


def _softmax(log: bool) -> ModuleBuilder:
    """Opset 13 made Softmax act on one axis; before, it flattened the input from ``axis`` on."""

    def build(b: Builder, node: NodeProto, attrs: Attrs) -> None:
        if b.opset < 13:
            b.add_function(node, partial(_softmax_coerced, axis=attrs.get("axis", 1), log=log))
            return
        module = nn.LogSoftmax if log else nn.Softmax
        b.add_module(node, lambda: module(dim=attrs.get("axis", -1)), node.input[0], node.output[0])

    return build


def _clip(x: Tensor, low: Tensor | None = None, high: Tensor | None = None) -> Tensor:
    if low is None and high is None:
        return x
    return torch.clamp(x, min=low, max=high)


def _hard_sigmoid(x: Tensor, *, alpha: float, beta: float) -> Tensor:
    return torch.clamp(alpha * x + beta, 0.0, 1.0)


def _prelu(x: Tensor, slope: Tensor) -> Tensor:
    return torch.where(x >= 0, x, x * slope)


MODULES: dict[str, ModuleBuilder] = {
    "Relu": _activation(lambda _: nn.ReLU()),
    "LeakyRelu": _activation(lambda a: nn.LeakyReLU(a.get("alpha", 0.01))),
    "Sigmoid": _activation(lambda _: nn.Sigmoid()),
    "Tanh": _activation(lambda _: nn.Tanh()),
    "Elu": _activation(lambda a: nn.ELU(a.get("alpha", 1.0))),
    "Softmax": _softmax(log=False),
    "LogSoftmax": _softmax(log=True),
}

FUNCTIONS = {
    "Clip": plain(_clip),
    "HardSwish": plain(F.hardswish),
    "Softplus": plain(F.softplus),
    "Softsign": plain(F.softsign),
    "Mish": plain(F.mish),
    "PRelu": plain(_prelu),
    "Selu": lambda b, node, a: partial(
        _selu, alpha=a.get("alpha", 1.67326319), gamma=a.get("gamma", 1.05070102)
    ),
    "Celu": lambda b, node, a: partial(F.celu, alpha=a.get("alpha", 1.0)),
    "ThresholdedRelu": lambda b, node, a: partial(_thresholded_relu, alpha=a.get("alpha", 1.0)),
    "Gelu": lambda b, node, a: partial(F.gelu, approximate=a.get("approximate", "none")),
    "HardSigmoid": lambda b, node, a: partial(
        _hard_sigmoid, alpha=a.get("alpha", 0.2), beta=a.get("beta", 0.5)
    ),
}


def _selu(x: Tensor, *, alpha: float, gamma: float) -> Tensor:
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


def _thresholded_relu(x: Tensor, *, alpha: float) -> Tensor:
    return torch.where(x > alpha, x, torch.zeros_like(x))
