"""Reading an ONNX model before the rebuild: validation, opset lifting, refusals, shapes and names."""

import numpy as np
import onnx
import onnx.inliner
import onnx.shape_inference
import onnx.version_converter
import torch
from onnx import NodeProto, TensorProto, numpy_helper
from torch import Tensor

from workers.core.errors import ModelConversionError
from workers.engine.onnx_import.graph import Attrs, Shape

MIN_NATIVE_OPSET = 11  # older graphs (attribute-style Pad, Clip, Slice) are converted to FALLBACK_OPSET
FALLBACK_OPSET = 17


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise ModelConversionError("the model imports no default-domain ONNX opset")


def prepared(model: onnx.ModelProto) -> onnx.ModelProto:
    """Inline local functions, validate, and lift opsets older than the converter reads natively."""
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as error:
        raise ModelConversionError(f"not a valid ONNX model: {first_line(error)}") from None
    opset = default_opset(model)
    if opset >= MIN_NATIVE_OPSET:
        return model
    try:
        return onnx.version_converter.convert_version(model, FALLBACK_OPSET)
    except Exception as error:  # the converter raises bare RuntimeErrors and C++ errors alike
        raise ModelConversionError(
            f"ONNX opset {opset} is older than {MIN_NATIVE_OPSET} and could not be converted to opset "
            f"{FALLBACK_OPSET} ({first_line(error)}); re-export the model at opset 17 or later"
        ) from None


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def describe(node: NodeProto) -> str:
    return f"{node.op_type} node {node.name or node.output[0]!r}"


def refuse_unsupported(graph: onnx.GraphProto, supported: frozenset[str]) -> None:
    """Name every unsupported node at once, so one round trip tells the user everything."""
    unsupported = [
        f"{node.domain + '::' if node.domain not in ('', 'ai.onnx') else ''}{describe(node)}"
        for node in graph.node
        if node.domain not in ("", "ai.onnx") or node.op_type not in supported
    ]
    if unsupported:
        raise ModelConversionError(
            f"the model uses ONNX ops the engine cannot rebuild in torch: {', '.join(unsupported)}. "
            f"Supported ops: {', '.join(sorted(supported))}"
        )


def input_spec(graph: onnx.GraphProto) -> tuple[str, Shape]:
    initializers = {tensor.name for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    if len(inputs) != 1:
        names = ", ".join(repr(value.name) for value in inputs)
        small = [value.name for value in inputs if 0 < _size(value) <= 64]
        hint = (
            f"; {', '.join(repr(name) for name in small)} look like constants the exporter left as inputs "
            "(tf2onnx does so with an unadapted Keras Normalization layer): re-export with them as "
            "constants"
            if small and len(small) == len(inputs) - 1
            else ""
        )
        raise ModelConversionError(
            f"the graph has {len(inputs)} inputs ({names}); the engine audits image classifiers with one "
            f"image input{hint}"
        )
    value = inputs[0]
    tensor_type = value.type.tensor_type
    if not value.type.HasField("tensor_type") or tensor_type.elem_type != TensorProto.FLOAT:
        raise ModelConversionError(
            f"input {value.name!r} is not a float32 tensor; only float32 images are supported"
        )
    if not tensor_type.HasField("shape"):
        raise ModelConversionError(f"input {value.name!r} declares no shape")
    return value.name, dims(tensor_type.shape)


def _size(value: onnx.ValueInfoProto) -> int:
    """Elements of a fully known shape, else 0."""
    sizes = dims(value.type.tensor_type.shape) if value.type.tensor_type.HasField("shape") else (None,)
    return 0 if None in sizes else int(np.prod(sizes))


def dims(shape: onnx.TensorShapeProto) -> Shape:
    """Sizes, None for a dynamic dimension: named, unnamed, or written as -1 or 0 (paddle2onnx)."""
    return tuple(
        dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None for dim in shape.dim
    )


def static_shapes(model: onnx.ModelProto) -> dict[str, Shape]:
    """Shapes ONNX shape inference can tell: a layer's input rank or size, and shape values to fold."""
    graph = onnx.shape_inference.infer_shapes(model, data_prop=True).graph  # data_prop: Reshape via Shape
    return {
        value.name: dims(value.type.tensor_type.shape)
        for value in [*graph.input, *graph.value_info, *graph.output]
        if value.type.tensor_type.HasField("shape")
    }


def to_torch(tensor: TensorProto) -> Tensor:
    return torch.from_numpy(np.array(numpy_helper.to_array(tensor)))


def attributes(node: NodeProto) -> Attrs:
    values = {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}
    return {name: value.decode() if isinstance(value, bytes) else value for name, value in values.items()}
