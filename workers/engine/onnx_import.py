"""Our own ONNX -> torch converter: the graph becomes a module whose layers are real torch modules.

Why not onnx2torch or onnx2pytorch: both pull in torchvision (a CUDA torch on CPU machines) and miss
Reshape-19 ``allowzero``. Saliency audits need more than an interpreter anyway: weights must be
``nn.Parameter`` of ``nn.Conv2d``/``nn.Linear``/... modules (the randomization tests re-initialize them,
GradCAM hooks the last convolution), and every Relu node must be its own ``nn.ReLU`` (captum's Guided
Backprop overrides only those). Everything else runs as parameter-free torch functions, so gradients
flow to the input. Nodes whose inputs are all constants are evaluated once, here.
"""

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import onnx
import onnx.inliner
import onnx.shape_inference
import onnx.version_converter
import torch
import torch.nn.functional as F
from onnx import NodeProto, TensorProto, numpy_helper
from torch import Tensor, nn

from workers.engine.errors import ModelConversionError

MIN_NATIVE_OPSET = 11  # older graphs (attribute-style Pad, Clip, Slice) are converted to FALLBACK_OPSET
FALLBACK_OPSET = 17

Shape = tuple[int | None, ...]
_Fn = Callable[..., Tensor | tuple[Tensor, ...]]
_Attrs = dict[str, Any]


@dataclass(frozen=True)
class _Step:
    """One node at run time: either a submodule (by attribute name) or a pure function."""

    op_type: str
    inputs: tuple[str, ...]  # "" marks an omitted optional input
    outputs: tuple[str, ...]
    module: str | None = None
    fn: _Fn | None = None


class OnnxGraphModule(nn.Module):
    """Runs the converted graph in topological order; ``forward`` returns the value ``output_name``."""

    def __init__(self, input_name: str, input_shape: Shape, graph_outputs: tuple[str, ...], opset: int):
        super().__init__()
        self.input_name = input_name
        self.input_shape = input_shape  # None for dynamic dimensions such as the batch
        self.graph_outputs = graph_outputs
        self.output_name = graph_outputs[0]
        self.opset = opset  # default-domain opset the graph was read at, after any version conversion
        self.layer_names: dict[str, str] = {}  # module attribute -> name the artifact gave the layer
        self._steps: list[_Step] = []
        self._constant_buffers: dict[str, str] = {}  # ONNX value name -> buffer attribute

    def forward(self, x: Tensor) -> Tensor:
        return self.run(x, self.output_name)

    def run(self, x: Tensor, output_name: str) -> Tensor:
        """Evaluate the graph up to the value ``output_name`` (any value of the graph)."""
        env: dict[str, Tensor] = {name: getattr(self, attr) for name, attr in self._constant_buffers.items()}
        env[self.input_name] = x
        for step in self._steps:
            if output_name in env:
                break
            args = [env[name] if name else None for name in step.inputs]
            out = self._modules[step.module](*args) if step.module else step.fn(*args)
            env.update(zip(step.outputs, (out,) if isinstance(out, Tensor) else out, strict=False))
        if output_name not in env:
            raise ValueError(f"the graph has no value named {output_name!r}")
        return env[output_name]

    def pre_softmax_output(self) -> str | None:
        """The logits, when ``output_name`` is produced by a final Softmax/LogSoftmax; else None."""
        for step in self._steps:
            if self.output_name in step.outputs and step.op_type in ("Softmax", "LogSoftmax"):
                return step.inputs[0]
        return None


def onnx_to_torch(model: onnx.ModelProto) -> OnnxGraphModule:
    """Convert a single-input float32 ONNX classifier; raises ModelConversionError on what it cannot."""
    model = _prepared(model)
    graph = model.graph
    _refuse_unsupported(graph)
    builder = _Builder(model, _input_spec(graph))
    for index, node in enumerate(graph.node):
        builder.add(node, index)
    return builder.finish()


# --- preparation and refusals ---------------------------------------------------------------------


def _default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise ModelConversionError("the model imports no default-domain ONNX opset")


def _prepared(model: onnx.ModelProto) -> onnx.ModelProto:
    """Inline local functions, validate, and lift opsets older than the converter reads natively."""
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as error:
        raise ModelConversionError(f"not a valid ONNX model: {_first_line(error)}") from None
    opset = _default_opset(model)
    if opset >= MIN_NATIVE_OPSET:
        return model
    try:
        return onnx.version_converter.convert_version(model, FALLBACK_OPSET)
    except Exception as error:  # the converter raises bare RuntimeErrors and C++ errors alike
        raise ModelConversionError(
            f"ONNX opset {opset} is older than {MIN_NATIVE_OPSET} and could not be converted to opset "
            f"{FALLBACK_OPSET} ({_first_line(error)}); re-export the model at opset 17 or later"
        ) from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _describe(node: NodeProto) -> str:
    return f"{node.op_type} node {node.name or node.output[0]!r}"


def _refuse_unsupported(graph: onnx.GraphProto) -> None:
    """Name every unsupported node at once, so one round trip tells the user everything."""
    unsupported = [
        f"{node.domain + '::' if node.domain not in ('', 'ai.onnx') else ''}{_describe(node)}"
        for node in graph.node
        if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED_OPS
    ]
    if unsupported:
        raise ModelConversionError(
            f"the model uses ONNX ops the engine cannot rebuild in torch: {', '.join(unsupported)}. "
            f"Supported ops: {', '.join(sorted(SUPPORTED_OPS))}"
        )


def _input_spec(graph: onnx.GraphProto) -> tuple[str, Shape]:
    initializers = {tensor.name for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    if len(inputs) != 1:
        names = ", ".join(repr(value.name) for value in inputs)
        raise ModelConversionError(
            f"the graph has {len(inputs)} inputs ({names}); the engine audits image classifiers with one "
            "image input"
        )
    value = inputs[0]
    tensor_type = value.type.tensor_type
    if not value.type.HasField("tensor_type") or tensor_type.elem_type != TensorProto.FLOAT:
        raise ModelConversionError(
            f"input {value.name!r} is not a float32 tensor; only float32 images are supported"
        )
    if not tensor_type.HasField("shape"):
        raise ModelConversionError(f"input {value.name!r} declares no shape")
    return value.name, _dims(tensor_type.shape)


def _dims(shape: onnx.TensorShapeProto) -> Shape:
    return tuple(dim.dim_value if dim.HasField("dim_value") else None for dim in shape.dim)


def _static_shapes(model: onnx.ModelProto) -> dict[str, Shape]:
    """Shapes ONNX shape inference can tell; only used where a layer needs its input's rank or size."""
    graph = onnx.shape_inference.infer_shapes(model, data_prop=True).graph  # data_prop: Reshape via Shape
    return {
        value.name: _dims(value.type.tensor_type.shape)
        for value in [*graph.input, *graph.value_info, *graph.output]
        if value.type.tensor_type.HasField("shape")
    }


def _to_torch(tensor: TensorProto) -> Tensor:
    return torch.from_numpy(np.array(numpy_helper.to_array(tensor)))


def _attributes(node: NodeProto) -> _Attrs:
    values = {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}
    return {name: value.decode() if isinstance(value, bytes) else value for name, value in values.items()}


def _human_name(node: NodeProto, weight_name: str | None, index: int) -> str:
    """The name the artifact gave the layer: ``conv_1.weight`` -> ``conv_1``, ``/features/features.0/Conv``
    -> ``features.0``."""
    if weight_name and "." in weight_name and not weight_name.startswith("onnx::"):
        return weight_name.rsplit(".", 1)[0]
    parts = [part for part in node.name.split("/") if part]
    if node.name.startswith("/") and parts:
        return parts[-2] if len(parts) >= 2 else parts[0]
    return node.name or weight_name or f"{node.op_type.lower()}_{index}"


# --- the builder ------------------------------------------------------------------------------------


class _Builder:
    """Turns nodes into steps of an OnnxGraphModule, folding constant subgraphs on the way."""

    def __init__(self, model: onnx.ModelProto, input_spec: tuple[str, Shape]):
        graph = model.graph
        self.opset = _default_opset(model)
        self.consts: dict[str, Tensor] = {tensor.name: _to_torch(tensor) for tensor in graph.initializer}
        self.shapes = _static_shapes(model)
        self.consumers: dict[str, list[NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        outputs = tuple(value.name for value in graph.output)
        self.module = OnnxGraphModule(*input_spec, outputs, self.opset)
        self.fused: set[str] = set()  # outputs of Add nodes folded into a preceding Linear's bias
        self.reused: dict[tuple[Any, ...], str] = {}
        self.index = 0

    def add(self, node: NodeProto, index: int) -> None:
        self.index = index
        if node.output[0] in self.fused:
            return
        attrs = _attributes(node)
        if node.op_type == "Constant":
            self.consts[node.output[0]] = _constant_value(node, attrs)
        elif node.op_type in _MODULE_BUILDERS:
            _MODULE_BUILDERS[node.op_type](self, node, attrs)
        else:
            self.add_function(node, _FUNCTION_BUILDERS[node.op_type](self, node, attrs))

    def finish(self) -> OnnxGraphModule:
        module = self.module
        used = {name for step in module._steps for name in step.inputs} | set(module.graph_outputs)
        for name in sorted(used & self.consts.keys()):
            attr = self.attribute_name(f"const_{name}")
            module.register_buffer(attr, self.consts[name])
            module._constant_buffers[name] = attr
        return module.eval()

    # constants

    def const(self, node: NodeProto, position: int, what: str) -> Tensor:
        name = node.input[position] if position < len(node.input) else ""
        if name not in self.consts:
            raise ModelConversionError(
                f"{_describe(node)}: its {what} must be a constant initializer, so that it can become a "
                "torch layer with parameters"
            )
        return self.consts[name]

    def optional_const(self, node: NodeProto, position: int, what: str) -> Tensor | None:
        has_input = position < len(node.input) and node.input[position]
        return self.const(node, position, what) if has_input else None

    # steps

    def add_function(self, node: NodeProto, fn: _Fn) -> None:
        if all(not name or name in self.consts for name in node.input):
            out = fn(*[self.consts[name] if name else None for name in node.input])
            self.consts.update(zip(node.output, (out,) if isinstance(out, Tensor) else out, strict=False))
        else:
            self.module._steps.append(_Step(node.op_type, tuple(node.input), tuple(node.output), fn=fn))

    def add_module(
        self,
        node: NodeProto,
        make: Callable[[], nn.Module],
        data: str,
        output: str,
        params: tuple[str, ...] = (),
        attrs: _Attrs | None = None,
    ) -> None:
        """Register a module for ``node``; a node with the same weights and attributes reuses it (shared
        layers stay shared). Parameter-free modules (``params=()``) are never shared: one per node."""
        key = (node.op_type, params, repr(sorted((attrs or {}).items())))
        attr = self.reused.get(key) if params else None
        if attr is None:
            human = _human_name(node, params[0] if params else None, self.index)
            attr = self.attribute_name(human)
            self.module.add_module(attr, make())
            self.module.layer_names[attr] = human
            if params:
                self.reused[key] = attr
        self.module._steps.append(_Step(node.op_type, (data,), (output,), module=attr))

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
        fn = partial(_pad_constant, pads=_torch_pads(begin, end), value=value)
        self.module._steps.append(_Step("Pad", (name,), (padded,), fn=fn))
        return padded

    def pads(self, node: NodeProto, attrs: _Attrs, kernel: list[int]) -> tuple[list[int], list[int]]:
        """Begin and end pads per spatial dim, resolving auto_pad from the inferred input size."""
        spatial = len(kernel)
        auto_pad = attrs.get("auto_pad", "NOTSET")
        if auto_pad == "NOTSET":
            pads = list(attrs.get("pads", [0] * 2 * spatial))
            return pads[:spatial], pads[spatial:]
        if auto_pad == "VALID":
            return [0] * spatial, [0] * spatial
        if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
            raise ModelConversionError(f"{_describe(node)}: unknown auto_pad {auto_pad!r}")
        sizes = self.shapes.get(node.input[0], ())[2:]
        if len(sizes) != spatial or None in sizes:
            raise ModelConversionError(
                f"{_describe(node)}: auto_pad={auto_pad} needs the input's spatial size, which the graph "
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


_ModuleBuilder = Callable[[_Builder, NodeProto, _Attrs], None]
_FunctionBuilder = Callable[[_Builder, NodeProto, _Attrs], _Fn]


def _constant_value(node: NodeProto, attrs: _Attrs) -> Tensor:
    if "value" in attrs:
        return torch.from_numpy(np.array(numpy_helper.to_array(attrs["value"])))
    for key, dtype in (("value_float", torch.float32), ("value_floats", torch.float32)):
        if key in attrs:
            return torch.tensor(attrs[key], dtype=dtype)
    for key in ("value_int", "value_ints"):
        if key in attrs:
            return torch.tensor(attrs[key], dtype=torch.int64)
    raise ModelConversionError(f"{_describe(node)}: unsupported constant kind {sorted(attrs)}")


# --- layers with parameters ---------------------------------------------------------------------------


def _parameter(tensor: Tensor) -> nn.Parameter:
    return nn.Parameter(tensor.detach().to(torch.float32).clone())


def _with_parameters(module: nn.Module, weight: Tensor, bias: Tensor | None) -> nn.Module:
    """Modules are built on the meta device (no init, no draw from the global RNG), then given weights."""
    module.weight = _parameter(weight)
    module.bias = _parameter(bias) if bias is not None else None
    return module


_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_TRANSPOSE = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_BATCH_NORM = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


class BatchNormAnyRank(nn.modules.batchnorm._BatchNorm):
    """Batch normalization of an input whose rank shape inference cannot tell (e.g. after a Reshape
    computed from Shape in old opsets); ``F.batch_norm`` itself takes any rank from 2 on."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of rank 2 or more, got rank {input.dim()}")


def _conv(b: _Builder, node: NodeProto, attrs: _Attrs) -> None:
    weight = b.const(node, 1, "weight")
    bias = b.optional_const(node, 2, "bias")
    spatial = weight.dim() - 2
    if spatial not in _CONV:
        raise ModelConversionError(f"{_describe(node)}: {spatial}-d convolutions are not supported")
    group = attrs.get("group", 1)
    dilations = list(attrs.get("dilations", [1] * spatial))
    begin, end = b.pads(node, attrs, list(weight.shape[2:]))
    data = b.padded_input(node, begin, end, 0.0)

    def make() -> nn.Module:
        conv = _CONV[spatial](
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
        return _with_parameters(conv, weight, bias)

    b.add_module(node, make, data, node.output[0], tuple(node.input[1:]), attrs)


def _conv_transpose(b: _Builder, node: NodeProto, attrs: _Attrs) -> None:
    weight = b.const(node, 1, "weight")
    bias = b.optional_const(node, 2, "bias")
    spatial = weight.dim() - 2
    pads = list(attrs.get("pads", [0] * 2 * spatial))
    if spatial not in _CONV_TRANSPOSE or pads[:spatial] != pads[spatial:]:
        raise ModelConversionError(
            f"{_describe(node)}: only 1-3d transposed convolutions with symmetric pads"
        )
    if attrs.get("auto_pad", "NOTSET") != "NOTSET" or "output_shape" in attrs:
        raise ModelConversionError(
            f"{_describe(node)}: auto_pad and output_shape are not supported; use pads"
        )
    group = attrs.get("group", 1)

    def make() -> nn.Module:
        conv = _CONV_TRANSPOSE[spatial](
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
        return _with_parameters(conv, weight, bias)

    b.add_module(node, make, node.input[0], node.output[0], tuple(node.input[1:]), attrs)


def _linear(weight: Tensor, bias: Tensor | None) -> nn.Module:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    return _with_parameters(linear, weight, bias)


def _gemm(b: _Builder, node: NodeProto, attrs: _Attrs) -> None:
    """Gemm with a constant B is a Linear layer; alpha and beta are folded into its weight and bias."""
    if attrs.get("transA", 0):
        raise ModelConversionError(f"{_describe(node)}: transA=1 is not supported")
    weight = b.const(node, 1, "weight B")
    weight = weight if attrs.get("transB", 0) else weight.T
    c = b.optional_const(node, 2, "bias C")
    out_features = weight.shape[0]
    bias = None
    if c is not None:
        if c.dim() > 2 or (c.dim() == 2 and c.shape[0] != 1) or c.numel() not in (1, out_features):
            raise ModelConversionError(f"{_describe(node)}: bias C of shape {list(c.shape)} varies per row")
        bias = c.reshape(-1).expand(out_features) * attrs.get("beta", 1.0)
    scaled = weight * attrs.get("alpha", 1.0)
    b.add_module(
        node, lambda: _linear(scaled, bias), node.input[0], node.output[0], tuple(node.input[1:]), attrs
    )


def _matmul(b: _Builder, node: NodeProto, attrs: _Attrs) -> None:
    """MatMul by a constant 2-D weight is a Linear layer, taking the bias of an Add that follows alone."""
    a_name, b_name = node.input
    if a_name in b.consts and b_name not in b.consts:
        raise ModelConversionError(f"{_describe(node)}: a constant left operand is not supported")
    if b_name not in b.consts or a_name in b.consts:  # no weight, or a constant product to fold
        b.add_function(node, torch.matmul)
        return
    weight = b.consts[b_name]
    if weight.dim() != 2:
        raise ModelConversionError(f"{_describe(node)}: MatMul by a constant of rank {weight.dim()}")
    output, params, bias = node.output[0], (b_name,), None
    follower = _bias_add(b, node, weight.shape[1])
    if follower is not None:
        add, bias_name = follower
        output, params, bias = add.output[0], (b_name, bias_name), b.consts[bias_name]
        b.fused.add(output)
    b.add_module(node, lambda: _linear(weight.T, bias), a_name, output, params)


def _bias_add(b: _Builder, node: NodeProto, out_features: int) -> tuple[NodeProto, str] | None:
    """The Add after a MatMul, if it adds a constant 1-D bias and nothing else reads the product."""
    product = node.output[0]
    readers = b.consumers.get(product, [])
    if len(readers) != 1 or readers[0].op_type != "Add" or product in b.module.graph_outputs:
        return None
    add = readers[0]
    other = add.input[1] if add.input[0] == product else add.input[0]
    bias = b.consts.get(other)
    if bias is None or bias.dim() != 1 or bias.shape[0] != out_features:
        return None
    return add, other


def _batch_norm(b: _Builder, node: NodeProto, attrs: _Attrs) -> None:
    if attrs.get("training_mode", 0):
        raise ModelConversionError(f"{_describe(node)}: training-mode batch normalization is not supported")
    scale, shift, mean, var = (
        b.const(node, i, what) for i, what in enumerate(("scale", "B", "mean", "var"), 1)
    )
    rank = len(b.shapes.get(node.input[0], ()))
    if rank > max(_BATCH_NORM):
        raise ModelConversionError(f"{_describe(node)}: batch normalization of rank {rank}")

    def make() -> nn.Module:
        kind = _BATCH_NORM.get(rank, BatchNormAnyRank)
        norm = kind(scale.shape[0], eps=attrs.get("epsilon", 1e-5), device="meta")
        _with_parameters(norm, scale, shift)
        norm.running_mean = mean.detach().float().clone()
        norm.running_var = var.detach().float().clone()
        norm.num_batches_tracked = torch.tensor(0)
        return norm.eval()

    b.add_module(node, make, node.input[0], node.output[0], tuple(node.input[1:]), attrs)


def _activation(make: Callable[[_Attrs], nn.Module]) -> _ModuleBuilder:
    """Activations become one module per node: hooks and Guided Backprop see each one separately."""

    def build(b: _Builder, node: NodeProto, attrs: _Attrs) -> None:
        b.add_module(node, lambda: make(attrs), node.input[0], node.output[0])

    return build


def _softmax(log: bool) -> _ModuleBuilder:
    """Opset 13 made Softmax act on one axis; before, it flattened the input from ``axis`` on."""

    def build(b: _Builder, node: NodeProto, attrs: _Attrs) -> None:
        if b.opset < 13:
            b.add_function(node, partial(_softmax_coerced, axis=attrs.get("axis", 1), log=log))
            return
        module = nn.LogSoftmax if log else nn.Softmax
        b.add_module(node, lambda: module(dim=attrs.get("axis", -1)), node.input[0], node.output[0])

    return build


_MODULE_BUILDERS: dict[str, _ModuleBuilder] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "BatchNormalization": _batch_norm,
    "Relu": _activation(lambda _: nn.ReLU()),
    "LeakyRelu": _activation(lambda a: nn.LeakyReLU(a.get("alpha", 0.01))),
    "Sigmoid": _activation(lambda _: nn.Sigmoid()),
    "Tanh": _activation(lambda _: nn.Tanh()),
    "Elu": _activation(lambda a: nn.ELU(a.get("alpha", 1.0))),
    "Softmax": _softmax(log=False),
    "LogSoftmax": _softmax(log=True),
}


# --- parameter-free functions ---------------------------------------------------------------------------


def _softmax_coerced(x: Tensor, *, axis: int, log: bool) -> Tensor:
    flat = x.reshape(math.prod(x.shape[: axis % x.dim()]), -1)
    return (F.log_softmax(flat, dim=1) if log else F.softmax(flat, dim=1)).reshape(x.shape)


def _identity(x: Tensor, *_: Tensor | None) -> Tensor:
    return x


def _dropout(x: Tensor, *_: Tensor | None, mask: bool) -> Tensor | tuple[Tensor, Tensor]:
    """Inference: identity (and an all-true mask when the graph asks for one)."""
    return (x, torch.ones_like(x, dtype=torch.bool)) if mask else x


def _div(a: Tensor, b: Tensor) -> Tensor:
    if a.is_floating_point() or b.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


def _pow(a: Tensor, b: Tensor) -> Tensor:
    return torch.pow(a, b).to(a.dtype)


def _concat(*xs: Tensor, axis: int) -> Tensor:
    return torch.cat(xs, dim=axis)


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


def _axes(attr_axes: list[int] | None, axes: Tensor | None) -> list[int] | None:
    """Axes came as an attribute before opset 13 (18 for most reductions) and as an input since."""
    if attr_axes is not None:
        return list(attr_axes)
    return None if axes is None else [int(a) for a in axes.tolist()]


def _squeeze(x: Tensor, axes: Tensor | None = None, *, attr_axes: list[int] | None) -> Tensor:
    dims = _axes(attr_axes, axes)
    return x.squeeze() if dims is None else x.squeeze(tuple(d % x.dim() for d in dims))


def _unsqueeze(x: Tensor, axes: Tensor | None = None, *, attr_axes: list[int] | None) -> Tensor:
    dims = _axes(attr_axes, axes) or []
    rank = x.dim() + len(dims)
    for dim in sorted(d % rank for d in dims):
        x = x.unsqueeze(dim)
    return x


def _reduce(
    x: Tensor,
    axes: Tensor | None = None,
    *,
    op: Callable[..., Tensor],
    attr_axes: list[int] | None,
    keepdims: int,
    noop_with_empty_axes: int,
) -> Tensor:
    dims = _axes(attr_axes, axes)
    if not dims:
        if noop_with_empty_axes:
            return x
        dims = list(range(x.dim()))
    return op(x, dim=tuple(d % x.dim() for d in dims), keepdim=bool(keepdims))


def _shape(x: Tensor, *, start: int, end: int | None) -> Tensor:
    return torch.tensor(x.shape[start:end], dtype=torch.int64, device=x.device)


def _gather(x: Tensor, indices: Tensor, *, axis: int) -> Tensor:
    axis %= x.dim()
    index = indices.long()
    index = torch.where(index < 0, index + x.shape[axis], index)
    picked = x.index_select(axis, index.reshape(-1))
    return picked.reshape((*x.shape[:axis], *index.shape, *x.shape[axis + 1 :]))


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


def _cast(x: Tensor, *, dtype: torch.dtype) -> Tensor:
    return x.to(dtype)


def _cast_like(x: Tensor, like: Tensor) -> Tensor:
    return x.to(like.dtype)


def _expand(x: Tensor, shape: Tensor) -> Tensor:
    """ONNX Expand broadcasts both ways: a 1 in ``shape`` keeps the input's size."""
    return x.expand(torch.broadcast_shapes(x.shape, tuple(int(d) for d in shape.tolist())))


def _torch_pads(begin: list[int], end: list[int]) -> list[int]:
    """ONNX lists pads per axis, first axis first; F.pad wants (last_begin, last_end, ...)."""
    pads: list[int] = []
    for low, high in zip(reversed(begin), reversed(end), strict=True):
        pads += [low, high]
    return pads


def _pad_constant(x: Tensor, *, pads: list[int], value: float) -> Tensor:
    return F.pad(x, pads, value=value)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


def _pad(
    x: Tensor, pads: Tensor, value: Tensor | None = None, axes: Tensor | None = None, *, mode: str
) -> Tensor:
    rank = x.dim()
    axis_list = list(range(rank)) if axes is None else [int(a) % rank for a in axes.tolist()]
    amounts = [int(p) for p in pads.tolist()]
    begin = dict(zip(axis_list, amounts[: len(axis_list)], strict=True))
    end = dict(zip(axis_list, amounts[len(axis_list) :], strict=True))
    torch_pads = _torch_pads([begin.get(d, 0) for d in range(rank)], [end.get(d, 0) for d in range(rank)])
    while torch_pads[-2:] == [0, 0]:  # F.pad's reflect/replicate modes only take trailing dims
        torch_pads = torch_pads[:-2]
    if not torch_pads:
        return x
    if mode != "constant":
        return F.pad(x, torch_pads, mode=_PAD_MODES[mode])
    fill = 0.0 if value is None or value.numel() == 0 else value.item()
    return F.pad(x, torch_pads, value=fill)


def _clip(x: Tensor, low: Tensor | None = None, high: Tensor | None = None) -> Tensor:
    if low is None and high is None:
        return x
    return torch.clamp(x, min=low, max=high)


def _hard_sigmoid(x: Tensor, *, alpha: float, beta: float) -> Tensor:
    return torch.clamp(alpha * x + beta, 0.0, 1.0)


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


def _pool_geometry(b: _Builder, node: NodeProto, attrs: _Attrs) -> _Attrs:
    """Kernel, stride and padding; pads torch pooling cannot take (asymmetric or over half the kernel)
    become an explicit pre-padding."""
    if len(node.output) > 1 and node.output[1]:
        raise ModelConversionError(f"{_describe(node)}: the Indices output is not supported")
    kernel = list(attrs["kernel_shape"])
    spatial = len(kernel)
    if spatial not in _MAX_POOL:
        raise ModelConversionError(f"{_describe(node)}: {spatial}-d pooling is not supported")
    begin, end = b.pads(node, attrs, kernel)
    native = begin == end and all(p <= k // 2 for p, k in zip(begin, kernel, strict=True))
    return {
        "kernel": kernel,
        "stride": list(attrs.get("strides", [1] * spatial)),
        "padding": begin if native else [0] * spatial,
        "ceil_mode": bool(attrs.get("ceil_mode", 0)),
        "pre_pad": None if native else _torch_pads(begin, end),
    }


def _max_pool_builder(b: _Builder, node: NodeProto, attrs: _Attrs) -> _Fn:
    geometry = _pool_geometry(b, node, attrs)
    dilation = list(attrs.get("dilations", [1] * len(geometry["kernel"])))
    return partial(_max_pool, dilation=dilation, **geometry)


def _avg_pool_builder(b: _Builder, node: NodeProto, attrs: _Attrs) -> _Fn:
    if any(d != 1 for d in attrs.get("dilations", [])):
        raise ModelConversionError(f"{_describe(node)}: dilated average pooling is not supported")
    geometry = _pool_geometry(b, node, attrs)
    return partial(_avg_pool, count_include_pad=bool(attrs.get("count_include_pad", 0)), **geometry)


def _global_pool(x: Tensor, *, op: Callable[..., Tensor]) -> Tensor:
    return op(x, dim=tuple(range(2, x.dim())), keepdim=True)


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


def _cast_builder(b: _Builder, node: NodeProto, attrs: _Attrs) -> _Fn:
    if attrs["to"] not in _TORCH_DTYPES:
        raise ModelConversionError(f"{_describe(node)}: cast to {TensorProto.DataType.Name(attrs['to'])}")
    return partial(_cast, dtype=_TORCH_DTYPES[attrs["to"]])


def _pad_builder(b: _Builder, node: NodeProto, attrs: _Attrs) -> _Fn:
    mode = attrs.get("mode", "constant")
    if mode not in _PAD_MODES:
        raise ModelConversionError(f"{_describe(node)}: pad mode {mode!r} is not supported")
    return partial(_pad, mode=mode)


def _reduce_builder(op: Callable[..., Tensor]) -> _FunctionBuilder:
    def build(b: _Builder, node: NodeProto, attrs: _Attrs) -> _Fn:
        return partial(
            _reduce,
            op=op,
            attr_axes=attrs.get("axes"),
            keepdims=attrs.get("keepdims", 1),
            noop_with_empty_axes=attrs.get("noop_with_empty_axes", 0),
        )

    return build


def _plain(fn: _Fn) -> _FunctionBuilder:
    return lambda b, node, attrs: fn


_FUNCTION_BUILDERS: dict[str, _FunctionBuilder] = {
    "Add": _plain(torch.add),
    "Sub": _plain(torch.sub),
    "Mul": _plain(torch.mul),
    "Div": _plain(_div),
    "Pow": _plain(_pow),
    "Neg": _plain(torch.neg),
    "Exp": _plain(torch.exp),
    "Log": _plain(torch.log),
    "Sqrt": _plain(torch.sqrt),
    "Abs": _plain(torch.abs),
    "Erf": _plain(torch.erf),
    "Reciprocal": _plain(torch.reciprocal),
    "Floor": _plain(torch.floor),
    "Ceil": _plain(torch.ceil),
    "Identity": _plain(_identity),
    "CastLike": _plain(_cast_like),
    "Expand": _plain(_expand),
    "Clip": _plain(_clip),
    "Slice": _plain(_slice),
    "HardSwish": _plain(F.hardswish),
    "Softplus": _plain(F.softplus),
    "GlobalAveragePool": _plain(partial(_global_pool, op=torch.mean)),
    "GlobalMaxPool": _plain(partial(_global_pool, op=torch.amax)),
    "Gelu": lambda b, node, a: partial(F.gelu, approximate=a.get("approximate", "none")),
    "HardSigmoid": lambda b, node, a: partial(
        _hard_sigmoid, alpha=a.get("alpha", 0.2), beta=a.get("beta", 0.5)
    ),
    "Dropout": lambda b, node, a: partial(_dropout, mask=len(node.output) > 1 and bool(node.output[1])),
    "Concat": lambda b, node, a: partial(_concat, axis=a["axis"]),
    "Transpose": lambda b, node, a: partial(_transpose, perm=a.get("perm")),
    "Flatten": lambda b, node, a: partial(_flatten, axis=a.get("axis", 1)),
    "Reshape": lambda b, node, a: partial(_reshape, allowzero=a.get("allowzero", 0)),
    "Squeeze": lambda b, node, a: partial(_squeeze, attr_axes=a.get("axes")),
    "Unsqueeze": lambda b, node, a: partial(_unsqueeze, attr_axes=a.get("axes")),
    "Shape": lambda b, node, a: partial(_shape, start=a.get("start", 0), end=a.get("end")),
    "Gather": lambda b, node, a: partial(_gather, axis=a.get("axis", 0)),
    "ConstantOfShape": lambda b, node, a: partial(
        _constant_of_shape, value=_to_torch(a["value"]) if "value" in a else torch.zeros(1)
    ),
    "Cast": _cast_builder,
    "Pad": _pad_builder,
    "MaxPool": _max_pool_builder,
    "AveragePool": _avg_pool_builder,
    "ReduceMean": _reduce_builder(torch.mean),
    "ReduceSum": _reduce_builder(torch.sum),
    "ReduceMax": _reduce_builder(torch.amax),
    "ReduceMin": _reduce_builder(torch.amin),
}

SUPPORTED_OPS: frozenset[str] = frozenset({"Constant", *_MODULE_BUILDERS, *_FUNCTION_BUILDERS})
