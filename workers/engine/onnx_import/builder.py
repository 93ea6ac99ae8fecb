"""Turns ONNX nodes into the steps of an OnnxGraphModule.

Op builders (one module per op family under ``ops``) either register a torch module for a node, or
return a parameter-free function. Nodes whose inputs are all constants, and ``Shape`` nodes whose answer
shape inference already knows, are evaluated here once instead of at every forward pass.
"""

import math
import re
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import NodeProto, numpy_helper
from torch import Tensor, nn

from workers.core.errors import ModelConversionError
from workers.engine.onnx_import.graph import Attrs, Fn, LearnedTensor, OnnxGraphModule, Shape, Step
from workers.engine.onnx_import.naming import Naming
from workers.engine.onnx_import.prepare import (
    attributes,
    default_opset,
    describe,
    static_shapes,
    to_torch,
)

# Ops through which a constant tensor joins the data path as a learned tensor rather than a weight.
_LEARNED_TENSOR_READERS = frozenset({"Add", "Sub", "Mul", "Div", "Concat", "Expand", "Tile", "Where"})
# Ops of the input's own scaling (a Normalize baked into the graph), before any layer: their constants
# normalize the input and are never learned tensors.
INPUT_SCALING = frozenset({"Sub", "Div", "Mul", "Add", "Cast", "Identity", "Transpose", "Pad"})

ModuleBuilder = Callable[["Builder", NodeProto, Attrs], None]
FunctionBuilder = Callable[["Builder", NodeProto, Attrs], Fn]


class Builder:
    """Holds what is known while nodes are read: constants, inferred shapes, who reads each value."""

    def __init__(
        self,
        model: onnx.ModelProto,
        input_spec: tuple[str, Shape],
        modules: dict[str, ModuleBuilder],
        functions: dict[str, FunctionBuilder],
    ):
        graph = model.graph
        self.module_builders, self.function_builders = modules, functions
        self.opset = default_opset(model)
        self.consts: dict[str, Tensor] = {tensor.name: to_torch(tensor) for tensor in graph.initializer}
        self.shapes = static_shapes(model)
        self.naming = Naming(model)
        self.consumers: dict[str, list[NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        outputs = tuple(value.name for value in graph.output)
        self.module = OnnxGraphModule(*input_spec, outputs, self.opset)
        self.fused: set[str] = set()  # outputs of nodes folded into the layer before them
        self.reused: dict[tuple[Any, ...], str] = {}
        self.learned: dict[str, str] = {}  # constant name -> value name of its LearnedTensor
        self.input_scaling: set[str] = {input_spec[0]}  # the input and its scaled copies, before any layer
        self.index = 0

    def add(self, node: NodeProto, index: int) -> None:
        self.index = index
        if node.output[0] in self.fused:
            return
        attrs = attributes(node)
        known_shape = self._known_shape(node, attrs) if node.op_type == "Shape" else None
        if node.op_type == "Constant":
            self.consts[node.output[0]] = constant_value(node, attrs)
        elif known_shape is not None:
            self.consts[node.output[0]] = known_shape
        elif node.op_type in self.module_builders:
            self.module_builders[node.op_type](self, node, attrs)
        else:
            self.add_function(node, self.function_builders[node.op_type](self, node, attrs))

    def _known_shape(self, node: NodeProto, attrs: Attrs) -> Tensor | None:
        shape = self.shapes.get(node.input[0])
        if shape is None:
            return None
        part = shape[attrs.get("start", 0) : attrs.get("end")]
        return None if None in part else torch.tensor(part, dtype=torch.int64)

    def finish(self) -> OnnxGraphModule:
        module = self.module
        module.static_ranks = {name: len(shape) for name, shape in self.shapes.items()}
        used = {name for step in module.steps for name in step.inputs} | set(module.graph_outputs)
        for name in sorted(used & self.consts.keys()):
            attr = self.attribute_name(f"const_{name}")
            module.register_buffer(attr, self.consts[name])
            module.constant_buffers[name] = attr
        return module.eval()

    # constants

    def const(self, node: NodeProto, position: int, what: str) -> Tensor:
        name = node.input[position] if position < len(node.input) else ""
        if name not in self.consts:
            raise ModelConversionError(
                f"{describe(node)}: its {what} must be a constant initializer, so that it can become a "
                "torch layer with parameters"
            )
        return self.consts[name]

    def optional_const(self, node: NodeProto, position: int, what: str) -> Tensor | None:
        has_input = position < len(node.input) and node.input[position]
        return self.const(node, position, what) if has_input else None

    def sole_reader(self, value: str, *op_types: str) -> NodeProto | None:
        """The node reading ``value``, when it is the only reader, of one of ``op_types``, and ``value`` is
        not a graph output (so that it can be folded into the node producing ``value``)."""
        readers = self.consumers.get(value, [])
        if len(readers) != 1 or readers[0].op_type not in op_types or self.is_read(value, by_a_node=False):
            return None
        return readers[0]

    def is_read(self, value: str, by_a_node: bool = True) -> bool:
        """Whether the graph gives ``value`` out, or (``by_a_node``) a node reads it."""
        return value in self.module.graph_outputs or (by_a_node and bool(self.consumers.get(value)))

    # steps

    def _step(self, node: NodeProto, **kwargs: Any) -> Step:
        kwargs.setdefault("inputs", tuple(node.input))
        kwargs.setdefault("outputs", tuple(node.output))
        return Step(
            node.op_type, scope=self.naming.scope(node), name=node.name, attrs=attributes(node), **kwargs
        )

    def add_function(self, node: NodeProto, fn: Fn) -> None:
        if all(not name or name in self.consts for name in node.input):
            out = fn(*[self.consts[name] if name else None for name in node.input])
            self.consts.update(zip(node.output, (out,) if isinstance(out, Tensor) else out, strict=False))
        else:
            inputs = tuple(self._learned_value(node, name) for name in node.input)
            self.module.steps.append(self._step(node, inputs=inputs, fn=fn))
            if node.op_type in INPUT_SCALING and self.scales_input(node):
                self.input_scaling.update(node.output)

    def scales_input(self, node: NodeProto) -> bool:
        """Whether ``node`` works on the input (or its scaled copy) with nothing but constants besides."""
        data = [name for name in node.input if name and name not in self.consts]
        return bool(data) and all(name in self.input_scaling for name in data)

    def _learned_value(self, node: NodeProto, name: str) -> str:
        """``name`` itself, or the value of a LearnedTensor when ``name`` is a constant that looks learned:
        float, at least two finite values, entering the data path (not the input's own scaling, such as a
        baked-in mean and std). The rule reads no values beyond finiteness, so that an untrained model
        (a layer scale of ones, a position embedding of zeros) has the same layers as a trained one."""
        if name in self.learned:
            return self.learned[name]
        value = self.consts.get(name)
        if (
            value is None
            or node.op_type not in _LEARNED_TENSOR_READERS
            or self.scales_input(node)
            or not value.is_floating_point()
            or value.numel() < 2
            or not bool(torch.isfinite(value).all())
        ):
            return name
        human = name if "." in name or (not name.startswith("onnx::") and not name.startswith("val_")) else ""
        human = human or f"{self.naming.scope(node) or node.name}.tensor"
        attr = self.attribute_name(human)
        self.module.add_module(attr, LearnedTensor(value))
        self.module.layer_names[attr] = human
        output = f"{name}::learned"
        self.module.steps.append(
            Step("LearnedTensor", (), (output,), module=attr, scope=self.naming.scope(node))
        )
        self.learned[name] = output
        return output

    def add_module(
        self,
        node: NodeProto,
        make: Callable[[], nn.Module],
        inputs: str | tuple[str, ...],
        output: str,
        params: tuple[str, ...] = (),
        attrs: Attrs | None = None,
    ) -> None:
        """Register a module for ``node``; a node with the same weights and attributes reuses it (shared
        layers stay shared). Parameter-free modules (``params=()``) are never shared: one per node."""
        key = (node.op_type, params, repr(sorted((attrs or {}).items())))
        attr = self.reused.get(key) if params else None
        if attr is None:
            human = self.naming.layer(node, params[0] if params else None, self.index)
            attr = self.attribute_name(human)
            self.module.add_module(attr, make())
            self.module.layer_names[attr] = human
            if params:
                self.reused[key] = attr
        inputs = (inputs,) if isinstance(inputs, str) else inputs
        self.module.steps.append(self._step(node, inputs=inputs, outputs=(output,), module=attr))

    def attribute_name(self, human: str) -> str:
        base = re.sub(r"\W", "_", human).strip("_") or "layer"
        base = f"layer_{base}" if base[0].isdigit() else base
        name, suffix = base, 1
        while hasattr(self.module, name):
            suffix += 1
            name = f"{base}_{suffix}"
        return name

    def padded_input(self, node: NodeProto, begin: list[int], end: list[int], value: float) -> str:
        """Asymmetric padding, which torch layers cannot express, becomes an F.pad step before the layer."""
        name = node.input[0]
        if begin == end:
            return name
        padded = f"{node.output[0]}::padded_input"
        fn = partial(pad_constant, pads=torch_pads(begin, end), value=value)
        self.module.steps.append(Step("Pad", (name,), (padded,), fn=fn, scope=self.naming.scope(node)))
        return padded

    def pads(self, node: NodeProto, attrs: Attrs, kernel: list[int]) -> tuple[list[int], list[int]]:
        """Begin and end pads per spatial dim, resolving auto_pad from the inferred input size."""
        spatial = len(kernel)
        auto_pad = attrs.get("auto_pad", "NOTSET")
        if auto_pad == "NOTSET":
            pads = list(attrs.get("pads", [0] * 2 * spatial))
            return pads[:spatial], pads[spatial:]
        if auto_pad == "VALID":
            return [0] * spatial, [0] * spatial
        if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
            raise ModelConversionError(f"{describe(node)}: unknown auto_pad {auto_pad!r}")
        sizes = self.shapes.get(node.input[0], ())[2:]
        if len(sizes) != spatial or None in sizes:
            raise ModelConversionError(
                f"{describe(node)}: auto_pad={auto_pad} needs the input's spatial size, which the graph "
                "does not fix; export with explicit pads"
            )
        strides = attrs.get("strides", [1] * spatial)
        dilations = attrs.get("dilations", [1] * spatial)
        total = [
            max(0, (math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n)
            for n, s, k, d in zip(sizes, strides, kernel, dilations, strict=True)
        ]
        small, large = [t // 2 for t in total], [t - t // 2 for t in total]
        return (small, large) if auto_pad == "SAME_UPPER" else (large, small)


def constant_value(node: NodeProto, attrs: Attrs) -> Tensor:
    if "value" in attrs:
        return torch.from_numpy(np.array(numpy_helper.to_array(attrs["value"])))
    for key, dtype in (("value_float", torch.float32), ("value_floats", torch.float32)):
        if key in attrs:
            return torch.tensor(attrs[key], dtype=dtype)
    for key in ("value_int", "value_ints"):
        if key in attrs:
            return torch.tensor(attrs[key], dtype=torch.int64)
    raise ModelConversionError(f"{describe(node)}: unsupported constant kind {sorted(attrs)}")


def torch_pads(begin: list[int], end: list[int]) -> list[int]:
    """ONNX lists pads per axis, first axis first; F.pad wants (last_begin, last_end, ...)."""
    pads: list[int] = []
    for low, high in zip(reversed(begin), reversed(end), strict=True):
        pads += [low, high]
    return pads


def pad_constant(x: Tensor, *, pads: list[int], value: float) -> Tensor:
    return F.pad(x, pads, value=value)


def parameter(tensor: Tensor) -> nn.Parameter:
    return nn.Parameter(tensor.detach().to(torch.float32).clone())


def with_parameters(module: nn.Module, weight: Tensor, bias: Tensor | None) -> nn.Module:
    """Modules are built on the meta device (no init, no draw from the global RNG), then given weights."""
    module.weight = parameter(weight)
    module.bias = parameter(bias) if bias is not None else None
    return module


def plain(fn: Fn) -> FunctionBuilder:
    return lambda b, node, attrs: fn
