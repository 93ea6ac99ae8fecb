"""Model import: every accepted format becomes a verified, differentiable torch module with real layers
(one nn.ReLU per Relu node); everything else is refused with a message that says why and what to do."""

import pickle
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from workers.core import formats as formats_module
from workers.core.errors import AuditInputError, ModelConversionError, ProbeError, UnsafeArtifactError
from workers.engine.artifacts import LoadedModel, detect_format, load_model
from workers.engine.layers import layers_in_forward_order
from workers.engine.onnx_import import OnnxGraphModule, onnx_to_torch
from workers.engine.verification import verify_conversion

ATOL = 1e-4
IMAGE = (3, 8, 8)
KINDS = ("onnx_legacy", "onnx_dynamo", "torchscript", "torch_export")
FORMATS = {
    "onnx_legacy": "onnx",
    "onnx_dynamo": "onnx",
    "torchscript": "torchscript",
    "torch_export": "torch_export",
}


class SmallCnn(nn.Module):
    """Padding, BatchNorm, ReLU modules, MaxPool, Flatten, Linear. At module level: torch.jit.script reads
    its source."""

    softmax: torch.jit.Final[bool]

    def __init__(self, softmax: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(8 * 4 * 4, 16)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(16, 5)
        self.softmax = softmax

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu1(self.bn1(self.conv1(x))))
        x = self.flatten(self.relu2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.logits(x)
        return torch.softmax(logits, dim=1) if self.softmax else logits


def small_cnn(softmax: bool = False) -> SmallCnn:
    torch.manual_seed(0)
    model = SmallCnn(softmax)
    with torch.no_grad():  # non-trivial statistics, so that folding BatchNorm into the conv matters
        model.bn1.running_mean.uniform_(-0.5, 0.5)
        model.bn1.running_var.uniform_(0.5, 2.0)
        model.bn1.weight.normal_(1.0, 0.2)
        model.bn1.bias.normal_(0.0, 0.2)
    return model.eval()


def export(model: nn.Module, kind: str, path: Path, *, dynamic: bool = True) -> Path:
    example = torch.randn(2, *IMAGE)
    batch = {0: torch.export.Dim("batch")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "onnx_legacy":
            axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None
            torch.onnx.export(
                model, (example,), path, dynamo=False, opset_version=17, input_names=["input"],
                output_names=["logits"], dynamic_axes=axes,
            )  # fmt: skip
        elif kind == "onnx_dynamo":
            torch.onnx.export(
                model,
                (example,),
                path,
                dynamo=True,
                external_data=False,
                dynamic_shapes=(batch,),
                verbose=False,
            )
        elif kind == "torchscript":
            torch.jit.script(model).save(str(path))
        else:
            torch.export.save(torch.export.export(model, (example,), dynamic_shapes=(batch,)), path)
    return path


@pytest.fixture(scope="module")
def model() -> SmallCnn:
    return small_cnn()


@pytest.fixture(scope="module")
def artifacts(model: SmallCnn, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("artifacts")
    suffixes = {"onnx_legacy": ".onnx", "onnx_dynamo": ".onnx", "torchscript": ".pt", "torch_export": ".pt2"}
    return {kind: export(model, kind, folder / f"{kind}{suffixes[kind]}") for kind in KINDS}


@pytest.fixture(scope="module")
def loaded(artifacts: dict[str, Path], probes: np.ndarray) -> dict[str, LoadedModel]:
    return {kind: load_model(path, example_input=probes[:2]) for kind, path in artifacts.items()}


@pytest.fixture(scope="module")
def probes() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(40, *IMAGE)).astype(np.float32)


# --- every format --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_loads_and_verifies(
    kind: str, artifacts: dict[str, Path], loaded: dict[str, LoadedModel], model: SmallCnn, probes: np.ndarray
) -> None:
    result = loaded[kind]
    assert detect_format(artifacts[kind]) == FORMATS[kind] == result.artifact.format
    check = verify_conversion(result, probes, atol=ATOL, rtol=0.0, batch_size=16)
    assert check.n_images == len(probes)
    assert check.max_abs_logit_diff < ATOL
    assert check.argmax_agreement == 1.0
    with torch.no_grad():
        expected = model(torch.from_numpy(probes))
        assert torch.allclose(result.module(torch.from_numpy(probes)), expected, atol=ATOL)
        assert result.module(torch.from_numpy(probes[:1])).shape == (1, 5)  # any batch size


@pytest.mark.parametrize("kind", KINDS)
def test_layers_are_real_modules(
    kind: str, loaded: dict[str, LoadedModel], artifacts: dict[str, Path]
) -> None:
    module = loaded[kind].module
    relus = [m for m in module.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 3 and len({id(m) for m in relus}) == 3
    if FORMATS[kind] == "onnx":
        graph = onnx.load(artifacts[kind]).graph
        assert len(relus) == sum(node.op_type == "Relu" for node in graph.node)
    assert sum(isinstance(m, nn.Conv2d) for m in module.modules()) == 2
    assert sum(isinstance(m, nn.Linear) for m in module.modules()) == 2
    assert all(isinstance(p, nn.Parameter) and p.dtype == torch.float32 for p in module.parameters())
    assert set(module.layer_names) <= {name for name, _ in module.named_modules()}
    assert {"conv2", "fc1", "fc2"} <= set(module.layer_names.values())


@pytest.mark.parametrize("kind", KINDS)
def test_input_gradient_matches_eager(kind: str, loaded: dict[str, LoadedModel], model: SmallCnn) -> None:
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(4, *IMAGE)).astype(np.float32))
    target = torch.arange(4) % 5

    def input_gradient(net: nn.Module) -> torch.Tensor:
        leaf = x.clone().requires_grad_(True)
        net(leaf).gather(1, target[:, None]).sum().backward()
        return leaf.grad

    assert torch.allclose(input_gradient(loaded[kind].module), input_gradient(model), atol=1e-5)


@pytest.mark.parametrize("kind", ["onnx_legacy", "torchscript"])
def test_final_softmax_is_dropped(kind: str, tmp_path: Path, probes: np.ndarray) -> None:
    model = small_cnn(softmax=True)
    result = load_model(export(model, kind, tmp_path / "softmax.bin"), example_input=probes[:2])
    assert any("Softmax dropped" in note for note in result.notes)
    assert (result.reference_output is not None) == (kind == "torchscript")  # a program exposes no logits
    with torch.no_grad():
        logits = result.module(torch.from_numpy(probes))
        assert torch.allclose(logits, model.logits(torch.from_numpy(probes)), atol=ATOL)
    verify_conversion(result, probes, atol=ATOL, rtol=0.0)


# --- refusals ------------------------------------------------------------------------------------------


def test_torch_save_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"  # the extension does not matter
    torch.save(small_cnn(), path)
    with pytest.raises(UnsafeArtifactError, match=r"torch\.save checkpoint.*ONNX"):
        load_model(path)


@pytest.mark.parametrize("protocol", [0, pickle.HIGHEST_PROTOCOL])
def test_raw_pickle_is_refused(protocol: int, tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    path.write_bytes(pickle.dumps({"conv.weight": [1.0, 2.0]}, protocol=protocol))
    with pytest.raises(UnsafeArtifactError, match="pickle"):
        detect_format(path)


def test_truncated_onnx_is_refused_by_name(artifacts: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "cut.onnx"
    data = artifacts["onnx_legacy"].read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AuditInputError, match=r"cut\.onnx.*(truncated|corrupt|not a valid)"):
        load_model(path)


def test_random_bytes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x42" + np.random.default_rng(0).bytes(4096))
    with pytest.raises(UnsafeArtifactError, match=r"not an ONNX, TorchScript or torch\.export file"):
        load_model(path)


def test_external_data_is_refused(artifacts: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "split.onnx"
    model = onnx.load(artifacts["onnx_legacy"])
    onnx.save_model(model, path, save_as_external_data=True, location="split.onnx.data", size_threshold=0)
    with pytest.raises(UnsafeArtifactError, match="single-file"):
        load_model(path)


def test_fixed_batch_is_refused(model: SmallCnn, tmp_path: Path) -> None:
    path = export(model, "onnx_legacy", tmp_path / "fixed.onnx", dynamic=False)
    with pytest.raises(AuditInputError, match="dynamic batch dimension"):
        load_model(path)


def test_oversized_files_are_refused(artifacts: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formats_module, "MAX_ARTIFACT_BYTES", 1000)
    with pytest.raises(UnsafeArtifactError, match="limited to"):
        load_model(artifacts["onnx_legacy"])


def test_programs_need_probes(artifacts: dict[str, Path]) -> None:
    with pytest.raises(AuditInputError, match="probe"):
        load_model(artifacts["torchscript"])


def test_unsupported_ops_are_named(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("TopK", ["x", "k"], ["values", "indices"], name="top"),
        helper.make_node("Einsum", ["values", "values"], ["y"], equation="ni,ni->ni", name="product"),
    ]
    model = graph_model(nodes, (6,), {"k": np.array([3], dtype=np.int64)})
    path = tmp_path / "odd.onnx"
    onnx.save_model(model, path)
    with pytest.raises(
        ModelConversionError, match=r"odd\.onnx.*TopK node 'top'.*Einsum node 'product'.*Conv"
    ):
        load_model(path)


def test_several_inputs_are_refused() -> None:
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        "two",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 2]) for name in ("a", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    with pytest.raises(ModelConversionError, match="2 inputs"):
        onnx_to_torch(onnx.shape_inference.infer_shapes(model))


def test_tampered_rebuild_fails_verification(artifacts: dict[str, Path], probes: np.ndarray) -> None:
    result = load_model(artifacts["onnx_legacy"])
    linear = next(m for m in result.module.modules() if isinstance(m, nn.Linear))
    with torch.no_grad():
        linear.weight.add_(0.05)
    with pytest.raises(ModelConversionError, match=r"does not match onnxruntime.*would be wrong"):
        verify_conversion(result, probes, atol=ATOL, rtol=0.0)


def test_probes_of_the_wrong_shape(loaded: dict[str, LoadedModel]) -> None:
    with pytest.raises(ProbeError, match=r"expects input of shape \(N, 3, 8, 8\).*\(2, 1, 8, 8\)"):
        verify_conversion(loaded["onnx_legacy"], np.zeros((2, 1, 8, 8), np.float32), atol=ATOL, rtol=0.0)


# --- single ops against onnxruntime ------------------------------------------------------------------------


def graph_model(
    nodes: list[onnx.NodeProto], shape: tuple[int, ...], constants: dict[str, np.ndarray], opset: int = 17
) -> onnx.ModelProto:
    """A graph with one float input ``x`` [N, *shape] and one output ``y``."""
    graph = helper.make_graph(
        nodes,
        "case",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    model = onnx.shape_inference.infer_shapes(model)  # the checker wants the output's shape
    output = model.graph.output[0].type.tensor_type
    if not output.HasField("shape"):  # ops inference cannot see through (function ops): the input's rank
        output.CopyFrom(
            helper.make_tensor_type_proto(
                TensorProto.FLOAT, ["N", *(f"d{i}" for i in range(len(shape)))]
            ).tensor_type
        )
    return model


def weights(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def ints(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


node = helper.make_node
OP_CASES = {
    "gemm_transB0_alpha_beta": (
        [node("Gemm", ["x", "w", "c"], ["y"], alpha=0.5, beta=2.0, transB=0)],
        (6,), {"w": weights(6, 4), "c": weights(1, 4)}, 17,
    ),
    "matmul_add_fused": (
        [node("MatMul", ["x", "w"], ["t"]), node("Add", ["b", "t"], ["y"])],
        (5, 6), {"w": weights(6, 4), "b": weights(4)}, 17,
    ),
    "gemm_opset9_converted": (
        [node("Gemm", ["x", "w", "c"], ["t"], transB=1), node("Relu", ["t"], ["y"])],
        (6,), {"w": weights(4, 6), "c": weights(4)}, 9,
    ),
    "reshape_allowzero": (
        [node("Reshape", ["x", "s"], ["y"], allowzero=1)], (3, 4), {"s": ints(-1, 12)}, 19,
    ),
    "reshape_zero_copies": ([node("Reshape", ["x", "s"], ["y"])], (3, 4), {"s": ints(0, -1)}, 13),
    "squeeze_unsqueeze_attributes": (
        [
            node("Unsqueeze", ["x"], ["a"], axes=[1]),
            node("Squeeze", ["a"], ["b"], axes=[1]),
            node("Unsqueeze", ["b"], ["y"], axes=[-1]),
        ],
        (3, 4), {}, 11,
    ),
    "squeeze_unsqueeze_inputs": (
        [
            node("Unsqueeze", ["x", "one"], ["a"]),
            node("Squeeze", ["a", "one"], ["b"]),
            node("Unsqueeze", ["b", "last"], ["y"]),
        ],
        (3, 4), {"one": ints(1), "last": ints(-1)}, 13,
    ),
    "slice_negative_step": (
        [node("Slice", ["x", "s", "e", "a", "k"], ["y"])],
        (3, 8), {"s": ints(-1), "e": ints(-1000), "a": ints(2), "k": ints(-2)}, 17,
    ),
    "pad_reflect": (
        [node("Pad", ["x", "p"], ["y"], mode="reflect")], (2, 5, 5), {"p": ints(0, 0, 1, 2, 0, 0, 2, 1)}, 17,
    ),
    "pad_constant_axes": (
        [node("Pad", ["x", "p", "v", "a"], ["y"])],
        (2, 5, 5), {"p": ints(1, 2), "v": np.array(0.5, np.float32), "a": ints(3)}, 18,
    ),
    "avgpool_asymmetric_exclude_pad": (
        [node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1])],
        (2, 7, 7), {}, 17,
    ),
    "avgpool_include_pad": (
        [node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)],
        (2, 6, 6), {}, 17,
    ),
    "maxpool_same_upper": (
        [node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_UPPER")],
        (2, 7, 7), {}, 17,
    ),
    "conv_same_upper_stride2": (
        [node("Conv", ["x", "w", "b"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2])],
        (2, 8, 8), {"w": weights(3, 2, 3, 3), "b": weights(3)}, 17,
    ),
    "conv1d_dilated_grouped": (
        [node("Conv", ["x", "w"], ["y"], group=2, dilations=[2], pads=[2, 2])],
        (4, 10), {"w": weights(4, 2, 3)}, 17,
    ),
    "conv_transpose": (
        [node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 2], pads=[1] * 4, output_padding=[1, 1])],
        (2, 4, 4), {"w": weights(2, 3, 3, 3), "b": weights(3)}, 17,
    ),
    "batchnorm": (
        [node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"], epsilon=1e-3)],
        (3, 4, 4),
        {"g": weights(3), "b": weights(3, seed=1), "m": weights(3, seed=2), "v": np.full(3, 1.5, np.float32)},
        17,
    ),
    "softmax_opset11_flattens": ([node("Softmax", ["x"], ["y"], axis=1)], (2, 3, 4), {}, 11),
    "reduce_mean_and_global_pool": (
        [
            node("ReduceMean", ["x"], ["a"], axes=[2, 3], keepdims=0),
            node("GlobalAveragePool", ["x"], ["g"]),
            node("Flatten", ["g"], ["f"]),
            node("Add", ["a", "f"], ["y"]),
        ],
        (2, 4, 4), {}, 17,
    ),
    "shape_gather_concat_reshape": (
        [
            node("Shape", ["x"], ["s"]),
            node("Gather", ["s", "zero"], ["n"], axis=0),
            node("Unsqueeze", ["n", "axis0"], ["n1"]),
            node("Concat", ["n1", "minus_one"], ["shape"], axis=0),
            node("Reshape", ["x", "shape"], ["y"]),
        ],
        (2, 3, 4), {"zero": np.array(0, np.int64), "axis0": ints(0), "minus_one": ints(-1)}, 17,
    ),
    "activations": (
        [
            node("LeakyRelu", ["x"], ["a"], alpha=0.1),
            node("Clip", ["a", "low", "high"], ["b"]),
            node("Elu", ["b"], ["c"]),
            node("Tanh", ["c"], ["d"]),
            node("Sigmoid", ["x"], ["e"]),
            node("Mul", ["d", "e"], ["y"]),
        ],
        (6,), {"low": np.array(0.0, np.float32), "high": np.array(6.0, np.float32)}, 17,
    ),
    "arithmetic": (
        [
            node("Div", ["x", "two"], ["a"]),
            node("Abs", ["a"], ["b"]),
            node("Sqrt", ["b"], ["c"]),
            node("Pow", ["c", "two"], ["d"]),
            node("Neg", ["x"], ["e"]),
            node("Exp", ["e"], ["f"]),
            node("Sub", ["d", "f"], ["y"]),
        ],
        (6,), {"two": np.array(2.0, np.float32)}, 17,
    ),
    "transpose_concat": (
        [node("Transpose", ["x"], ["t"], perm=[0, 2, 1]), node("Concat", ["t", "t"], ["y"], axis=2)],
        (2, 3), {}, 17,
    ),
    "layer_norm_last_axis": (
        [node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1, epsilon=1e-6)],
        (5, 6), {"g": weights(6), "b": weights(6, seed=1)}, 17,
    ),
    "layer_norm_two_axes_no_bias": (
        [node("LayerNormalization", ["x", "g"], ["y"], axis=2)], (3, 4, 5), {"g": weights(4, 5)}, 17,
    ),
    "group_norm_opset21_per_channel": (
        [node("GroupNormalization", ["x", "g", "b"], ["y"], num_groups=2)],
        (4, 3, 3), {"g": weights(4), "b": weights(4, seed=1)}, 21,
    ),
    "instance_norm": (
        [node("InstanceNormalization", ["x", "g", "b"], ["y"])],
        (3, 4, 4), {"g": weights(3), "b": weights(3, seed=1)}, 17,
    ),
    "gelu_opset20_erf_hard_activations": (
        [
            node("Gelu", ["x"], ["a"]),
            node("Gelu", ["x"], ["t"], approximate="tanh"),
            node("Erf", ["x"], ["e"]),
            node("HardSwish", ["x"], ["h"]),
            node("HardSigmoid", ["x"], ["s"], alpha=0.3),
            node("Softplus", ["x"], ["p"]),
            node("PRelu", ["x", "slope"], ["r"]),
            node("Sum", ["a", "t", "e", "h", "s", "p", "r"], ["y"]),
        ],
        (6,), {"slope": weights(6)}, 20,
    ),
    "equal_where_mod_min_max": (
        [
            node("Shape", ["x"], ["shape"]),
            node("Mod", ["shape", "three"], ["m"]),
            node("Equal", ["m", "zero"], ["even"]),
            node("Where", ["even", "shape", "one"], ["w"]),
            node("ReduceProd", ["w"], ["count"], keepdims=1),
            node("Cast", ["count"], ["c"], to=TensorProto.FLOAT),
            node("Max", ["x", "c"], ["big"]),
            node("Min", ["big", "x"], ["y"]),
        ],
        (3, 4), {"three": ints(3), "zero": ints(0), "one": ints(1)}, 18,
    ),
    "gather_nd_and_elements": (
        [
            node("GatherND", ["x", "idx"], ["g"], batch_dims=0),
            node("GatherElements", ["x", "el"], ["e"], axis=2),
            node("ReduceSum", ["e", "last"], ["r"], keepdims=0),
            node("Add", ["g", "r"], ["y"]),
        ],
        (3, 4), {"idx": ints(0, 2).reshape(1, 2), "el": ints(3, 0).reshape(1, 1, 2), "last": ints(2)}, 17,
    ),
    "split_num_outputs_tile_range": (
        [
            node("Split", ["x"], ["a", "b", "c"], axis=2, num_outputs=3),
            node("Concat", ["c", "a", "b"], ["cat"], axis=2),
            node("Tile", ["cat", "reps"], ["t"]),
            node("Range", ["start", "limit", "delta"], ["r"]),
            node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
            node("Mul", ["t", "rf"], ["y"]),
        ],
        (2, 7),
        {"reps": ints(1, 1, 2), "start": np.array(0), "limit": np.array(14), "delta": np.array(1)},
        18,
    ),
    "learned_tensor_added_to_tokens": (
        [node("MatMul", ["x", "w"], ["t"]), node("Add", ["t", "pos"], ["y"])],
        (5, 6), {"w": weights(6, 4), "pos": weights(1, 5, 4, seed=3)}, 17,
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", OP_CASES)
def test_op_matches_onnxruntime(case: str) -> None:
    nodes, shape, constants, opset = OP_CASES[case]
    model = graph_model(nodes, shape, constants, opset)
    module = onnx_to_torch(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = np.random.default_rng(batch).normal(size=(batch, *shape)).astype(np.float32)
        expected = session.run(["y"], {"x": x})[0]
        leaf = torch.from_numpy(x).requires_grad_(True)
        ours = module(leaf)
        np.testing.assert_allclose(ours.detach().numpy(), expected, atol=1e-5, rtol=1e-5)
        ours.sum().backward()
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all()


def test_learned_tensors_become_parameters_and_constants_stay_constants() -> None:
    nodes, shape, constants, opset = OP_CASES["learned_tensor_added_to_tokens"]
    module = onnx_to_torch(graph_model(nodes, shape, constants, opset))
    assert sorted(type(m).__name__ for m in module.children() if any(True for _ in m.parameters())) == [
        "LearnedTensor",
        "Linear",
    ]
    normalized = graph_model(
        [node("Sub", ["x", "mean"], ["y"])],
        (3, 2, 2),
        {"mean": np.array([0.4, 0.5, 0.6], np.float32)[:, None, None]},
    )
    assert not list(onnx_to_torch(normalized).parameters())  # input normalization stays a constant


def test_old_opsets_are_converted() -> None:
    nodes, shape, constants, opset = OP_CASES["gemm_opset9_converted"]
    assert onnx_to_torch(graph_model(nodes, shape, constants, opset)).opset == 17


def test_matmul_add_becomes_one_linear_with_bias() -> None:
    nodes, shape, constants, opset = OP_CASES["matmul_add_fused"]
    module = onnx_to_torch(graph_model(nodes, shape, constants, opset))
    (linear,) = [m for m in module.modules() if isinstance(m, nn.Linear)]
    assert torch.equal(linear.bias.detach(), torch.from_numpy(constants["b"]))


def test_batchnorm_becomes_an_eval_mode_module() -> None:
    nodes, shape, constants, opset = OP_CASES["batchnorm"]
    module = onnx_to_torch(graph_model(nodes, shape, constants, opset))
    (norm,) = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    assert not norm.training and norm.eps == pytest.approx(1e-3)
    assert torch.equal(norm.running_mean, torch.from_numpy(constants["m"]))


def test_pre_softmax_output_gives_the_logits() -> None:
    nodes = [node("Gemm", ["x", "w"], ["logits"], transB=1), node("Softmax", ["logits"], ["y"], axis=1)]
    module: OnnxGraphModule = onnx_to_torch(graph_model(nodes, (4,), {"w": weights(3, 4)}))
    assert module.pre_softmax_output() == "logits"
    x = torch.randn(2, 4)
    module.output_name = "logits"
    assert torch.allclose(module(x), x @ torch.from_numpy(weights(3, 4)).T, atol=1e-6)


def test_a_softmax_is_found_behind_identities_and_reshapes_only_over_n_by_classes() -> None:
    behind = [
        node("Gemm", ["x", "w"], ["logits"], transB=1),
        node("Softmax", ["logits"], ["p"], axis=-1),
        node("Identity", ["p"], ["q"]),
        node("Flatten", ["q"], ["y"]),
    ]
    module = onnx_to_torch(graph_model(behind, (4,), {"w": weights(3, 4)}))
    assert module.pre_softmax_output() == "logits"
    spatial = [
        node("Conv", ["x", "w"], ["scores"]),
        node("Softmax", ["scores"], ["p"], axis=1),
        node("Flatten", ["p"], ["y"]),
    ]
    kept = onnx_to_torch(graph_model(spatial, (4, 1, 1), {"w": weights(3, 4, 1, 1)}))
    assert kept.pre_softmax_output() is None  # its logits would be [N, 3, 1, 1]: the softmax stays


class TwoHeads(nn.Module):
    """An auxiliary head, as Inception v3 and GoogLeNet export: the first output is the main one."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.main = nn.Linear(4 * 8 * 8, 3)
        self.aux = nn.Linear(4 * 8 * 8, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.relu(self.conv(x)).flatten(1)
        return self.main(features), self.aux(features)


def _layer_names(module: OnnxGraphModule, x: torch.Tensor) -> list[str]:
    return [layer.name for layer in layers_in_forward_order(module, x[:1], module.layer_names)]


@pytest.mark.parametrize("kind", ["onnx_legacy", "torch_export"])
def test_the_named_output_is_audited_and_heads_that_do_not_feed_it_are_pruned(
    kind: str, tmp_path: Path
) -> None:
    model, x = TwoHeads().eval(), torch.rand(2, 1, 8, 8)
    path = tmp_path / ("model.onnx" if kind == "onnx_legacy" else "model.pt2")
    if kind == "onnx_legacy":
        torch.onnx.export(
            model, (x,), path, dynamo=False, opset_version=17, input_names=["input"],
            output_names=["main", "aux"], dynamic_axes={"input": {0: "batch"}},
        )  # fmt: skip
    else:
        torch.export.save(
            torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("b")},)), path
        )
    first = load_model(path, example_input=x.numpy())
    assert first.module(x).shape == (2, 3) and "2 outputs" in first.notes[0]
    assert _layer_names(first.module, x) == ["conv", "main"]
    aux = load_model(path, example_input=x.numpy(), output="1")
    assert torch.allclose(aux.module(x), model(x)[1], atol=1e-6)
    assert np.allclose(aux.reference(x.numpy()), model(x)[1].detach().numpy(), atol=1e-6)
    assert _layer_names(aux.module, x) == ["conv", "aux"]
    with pytest.raises(AuditInputError, match=r"no output 'logits'; its outputs are 0: "):
        load_model(path, example_input=x.numpy(), output="logits")


def test_batch_norm_after_a_conv_is_folded_into_it_by_either_exporter(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
        model[1].weight.uniform_(0.5, 2)
    model.eval()
    x = torch.rand(3, 1, 8, 8)
    for dynamo in (False, True):
        path = tmp_path / f"bn_{dynamo}.onnx"
        torch.onnx.export(
            model, (x,), path, dynamo=dynamo, input_names=["input"], external_data=False,
            **({"dynamic_shapes": ({0: torch.export.Dim("b")},)} if dynamo else
               {"dynamic_axes": {"input": {0: "batch"}}, "opset_version": 17, "do_constant_folding": False}),
        )  # fmt: skip
        module = load_model(path).module
        kinds = [type(m).__name__ for m in module.modules() if any(True for _ in m.parameters(recurse=False))]
        assert kinds == ["Conv2d", "Linear"], dynamo
        assert torch.allclose(module(x), model(x), atol=1e-5)
