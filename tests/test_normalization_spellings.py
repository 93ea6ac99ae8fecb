"""A batch norm however an exporter spells it (BatchNormalization, tf2onnx's constant Mul then Add, Sub then
Div) is folded into the convolution before it, or is one normalization layer; the layer list never depends
on the weights' values."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper

from tests.test_model_import import graph_model, weights
from workers.core.audit_settings import ReinitScheme
from workers.engine.layers import NORMALIZATIONS, layers_in_forward_order, reinitialize
from workers.engine.onnx_import import onnx_to_torch
from workers.engine.onnx_import.ops.normalization import ChannelAffine

node = helper.make_node
C = 4


def _per_channel(value: np.ndarray, shape: tuple[int, ...] = (1, C, 1, 1)) -> np.ndarray:
    return value.reshape(shape).astype(np.float32)


def _conv_then(nodes: list[onnx.NodeProto], constants: dict[str, np.ndarray]) -> onnx.ModelProto:
    conv = node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1])
    head = [node("Flatten", ["n"], ["f"]), node("MatMul", ["f", "fc"], ["y"])]
    weights_ = {"w": weights(C, 3, 3, 3), "b": weights(C, seed=1), "fc": weights(C * 8 * 8, 5, seed=2)}
    return graph_model([conv, *nodes, *head], (3, 8, 8), weights_ | constants)


def _matches_onnxruntime(model: onnx.ModelProto) -> None:
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["y"], {"x": x}
    )[0]
    ours = onnx_to_torch(model)(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)


def _layers(model: onnx.ModelProto) -> list[tuple[str, str]]:
    module = onnx_to_torch(model)
    return [(layer.name, layer.kind) for layer in layers_in_forward_order(module, torch.zeros(1, 3, 8, 8))]


SPELLINGS = {
    "mul_add": (
        [node("Mul", ["c", "scale"], ["m"]), node("Add", ["m", "shift"], ["n"])],
        {"scale": _per_channel(weights(C, seed=3)), "shift": _per_channel(weights(C, seed=4), (C, 1, 1))},
    ),
    "sub_div": (
        [node("Sub", ["c", "mean"], ["s"]), node("Div", ["s", "std"], ["n"])],
        {"mean": _per_channel(weights(C, seed=5)), "std": _per_channel(np.linspace(0.5, 2, C))},
    ),
    "scalar_mul_then_add": (
        [node("Mul", ["scale", "c"], ["m"]), node("Add", ["shift", "m"], ["n"])],
        {"scale": np.array([1.5], np.float32), "shift": _per_channel(weights(C, seed=6))},
    ),
}


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_a_per_channel_affine_after_a_conv_is_folded_into_it(spelling: str) -> None:
    model = _conv_then(*SPELLINGS[spelling])
    _matches_onnxruntime(model)
    assert [kind for _, kind in _layers(model)] == ["Conv2d", "Linear"]
    module = onnx_to_torch(model)
    assert [step.op_type for step in module.steps if step.op_type in ("Mul", "Add", "Sub", "Div")] == []


def test_a_constant_along_the_width_is_not_a_per_channel_map_and_is_not_folded() -> None:
    model = _conv_then([node("Mul", ["c", "along_w"], ["n"])], {"along_w": weights(8, seed=7)})
    _matches_onnxruntime(model)
    assert "Mul" in [step.op_type for step in onnx_to_torch(model).steps]


def _dense_then_affine(scale: np.ndarray, shift: np.ndarray) -> onnx.ModelProto:
    nodes = [
        node("Flatten", ["x"], ["f"]),
        node("MatMul", ["f", "w"], ["d"]),
        node("Relu", ["d"], ["r"]),
        node("Mul", ["r", "scale"], ["m"]),
        node("Add", ["m", "shift"], ["n"]),
        node("MatMul", ["n", "fc"], ["y"]),
    ]
    constants = {"w": weights(3 * 8 * 8, C), "scale": scale, "shift": shift, "fc": weights(C, 5, seed=2)}
    return graph_model(nodes, (3, 8, 8), constants)


def test_mul_then_add_after_a_dense_layer_is_one_normalization_layer_reinitialized_as_one() -> None:
    model = _dense_then_affine(weights(C, seed=8), weights(C, seed=9))
    _matches_onnxruntime(model)
    module = onnx_to_torch(model)
    affine = [m for m in module.modules() if isinstance(m, ChannelAffine)]
    assert len(affine) == 1 and isinstance(affine[0], NORMALIZATIONS)
    reinitialize(affine[0], ReinitScheme.default, 0.01, seed=0)
    assert not torch.equal(affine[0].weight, torch.ones(C)) and torch.equal(affine[0].bias, torch.zeros(C))


def test_layer_lists_do_not_depend_on_the_weights_values() -> None:
    """An untrained batch norm (scale 1, shift 0) and a trained one give the same layers."""
    untrained = _dense_then_affine(np.ones(C, np.float32), np.zeros(C, np.float32))
    trained = _dense_then_affine(weights(C, seed=8), weights(C, seed=9))
    assert _layers(untrained) == _layers(trained)
    zeros = _conv_then(
        [node("Add", ["c", "embedding"], ["n"])], {"embedding": np.zeros((C, 8, 8), np.float32)}
    )
    learned = _conv_then([node("Add", ["c", "embedding"], ["n"])], {"embedding": weights(C, 8, 8, seed=3)})
    assert _layers(zeros) == _layers(learned)
    assert [kind for _, kind in _layers(zeros)] == ["Conv2d", "LearnedTensor", "Linear"]


def test_a_baked_in_input_normalization_is_never_a_layer_whatever_its_values() -> None:
    """``Normalize((0.5,) * 3, (0.5,) * 3)`` in the graph: constants that scale the input, not weights."""
    nodes = [node("Sub", ["x", "mean"], ["s"]), node("Div", ["s", "std"], ["c"])]
    half = np.full((1, 3, 1, 1), 0.5, np.float32)
    model = graph_model(
        [*nodes, node("Flatten", ["c"], ["f"]), node("MatMul", ["f", "fc"], ["y"])],
        (3, 8, 8),
        {"mean": half, "std": half, "fc": weights(3 * 8 * 8, 5)},
    )
    assert [kind for _, kind in _layers(model)] == ["Linear"]


def test_a_shared_convolution_followed_by_different_affine_maps_is_not_shared_after_folding() -> None:
    """``c(x) + k`` and ``c(x) - k`` share a conv, but folding makes two different layers of it."""
    nodes = [
        node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]),
        node("Add", ["a", "k"], ["p"]),
        node("Conv", ["x2", "w"], ["b"], pads=[1, 1, 1, 1]),
        node("Sub", ["b", "k"], ["q"]),
        node("Add", ["p", "q"], ["n"]),
        node("Flatten", ["n"], ["f"]),
        node("MatMul", ["f", "fc"], ["y"]),
    ]
    constants = {
        "w": weights(C, 3, 3, 3),
        "k": _per_channel(weights(C, seed=2)),
        "fc": weights(C * 8 * 8, 5, seed=3),
        "two": np.array(2.0, np.float32),
    }
    model = graph_model([node("Mul", ["x", "two"], ["x2"]), *nodes], (3, 8, 8), constants)
    _matches_onnxruntime(model)


def test_an_attention_scale_and_bias_are_not_a_normalization_layer() -> None:
    """A per-head scale ``[h, 1, 1]`` and a relative position bias ``[1, h, T, T]`` (SwinV2)."""
    nodes = [
        node("MatMul", ["x", "x"], ["scores"]),
        node("Mul", ["scores", "scale"], ["scaled"]),
        node("Add", ["scaled", "bias"], ["biased"]),
        node("Flatten", ["biased"], ["f"]),
        node("MatMul", ["f", "fc"], ["y"]),
    ]
    constants = {
        "scale": weights(2, 1, 1),
        "bias": weights(1, 2, 4, 4, seed=1),
        "fc": weights(2 * 4 * 4, 5, seed=2),
    }
    module = onnx_to_torch(graph_model(nodes, (2, 4, 4), constants))
    assert not [m for m in module.modules() if isinstance(m, ChannelAffine)]
