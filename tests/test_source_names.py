"""Layers carry the names the source framework gave them, however the exporter wrote its scopes."""

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from tests.architectures import converted
from tests.test_model_import import weights
from workers.engine.layers import layers_in_forward_order
from workers.engine.onnx_import import onnx_to_torch


def _tf2onnx_cnn(prefix: str, suffix: str = "") -> onnx.ModelProto:
    """Conv, BatchNorm (Mul, Add), Relu, Dense, named as tf2onnx writes a Keras model under ``prefix``."""
    nodes = [
        helper.make_node("Conv", ["x", "kernel", "bias"], ["c"], name=f"{prefix}/conv2d{suffix}/BiasAdd"),
        helper.make_node("Mul", ["c", "scale"], ["m"], name=f"{prefix}/bn{suffix}/batchnorm/mul_1"),
        helper.make_node("Add", ["m", "shift"], ["n"], name=f"{prefix}/bn{suffix}/batchnorm/add_1"),
        helper.make_node("Relu", ["n"], ["r"], name=f"{prefix}/re_lu{suffix}/Relu"),
        helper.make_node("Flatten", ["r"], ["f"], name=f"{prefix}/flatten{suffix}/Reshape"),
        helper.make_node("MatMul", ["f", "dense_w"], ["y"], name=f"{prefix}/dense{suffix}/MatMul"),
    ]
    initializers = {
        f"{prefix}/conv2d{suffix}/convolution/ReadVariableOp:0": weights(4, 3, 3, 3),
        "bias": weights(4, seed=1),
        "scale": weights(4, 1, 1, seed=2),
        "shift": weights(4, 1, 1, seed=3),
        f"{prefix}/dense{suffix}/Cast/ReadVariableOp:0": weights(4 * 6 * 6, 5, seed=4),
    }
    names = iter(initializers)
    rename = {"kernel": next(names), "dense_w": list(initializers)[-1]}
    for n in nodes:
        n.input[:] = [rename.get(name, name) for name in n.input]
    graph = helper.make_graph(
        nodes,
        "keras",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 5])],
        initializer=[numpy_helper.from_array(value, name) for name, value in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], producer_name="tf2onnx")
    return model


def _names(model: onnx.ModelProto) -> list[str]:
    module = onnx_to_torch(model)
    layers = layers_in_forward_order(module, torch.zeros(1, 3, 8, 8), module.layer_names)
    return [layer.name for layer in layers]


def test_keras_layer_names_survive_wrappers_nested_models_and_the_trace_suffix() -> None:
    assert _names(_tf2onnx_cnn("sequential")) == ["conv2d", "dense"]
    assert _names(_tf2onnx_cnn("StatefulPartitionedCall/sequential")) == ["conv2d", "dense"]
    assert _names(_tf2onnx_cnn("model/mobilenetv2_1.00_224")) == ["conv2d", "dense"]
    assert _names(_tf2onnx_cnn("cnn_1", suffix="_1")) == ["conv2d", "dense"]  # Keras 3's traced scopes
    assert _names(_tf2onnx_cnn("cnn_1", suffix="_2")) == ["conv2d", "dense"]  # made unique once more


class _FeedForward(torch.nn.Module):
    """The Annotated Transformer's naming: ``w_1`` and ``w_2``, which look like Paddle's ``.w_0``."""

    def __init__(self) -> None:
        super().__init__()
        self.w_1 = torch.nn.Linear(12, 16)
        self.w_2 = torch.nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(torch.relu(self.w_1(x.flatten(1))))


def test_torch_layer_names_are_kept_as_the_module_gave_them() -> None:
    example = torch.rand(2, 3, 2, 2)
    module = converted(_FeedForward().eval(), example)
    names = [layer.name for layer in layers_in_forward_order(module, example[:1], module.layer_names)]
    assert names == ["w_1", "w_2"]
    assert np.isfinite(module(example).detach().numpy()).all()
