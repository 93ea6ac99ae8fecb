"""Classifiers exported from Keras (tf2onnx), Flax (jax2onnx) and PaddlePaddle (paddle2onnx), audited through
the CLI and held to the source framework's own input gradients and GradCAM maps.

The corpus (tests/foreign_models, made by its make.sh in each framework's own environment) stores, beside
each ONNX file, probes in the model's own layout and the framework's gradients and GradCAM at the layer a
practitioner names. Channels-last exports must be read right without any option.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from tests.foreign_corpus import (
    CORPUS,
    GRAPH_NAMES,
    MANIFEST,
    channels_first,
    gradcam_layer,
    matching,
    probes_file,
    stored,
    trained_map,
)
from workers.cli.main import main
from workers.core.report import AuditReport
from workers.engine.artifacts import load_model
from workers.engine.methods.gradcam_target import choose_target
from workers.engine.onnx_import import onnx_to_torch

FAST = ["--tests", "cascading", "--ig-steps", "4", "--noise-samples", "4", "--draws", "1", "--max-draws", "1"]
FAST += ["--quiet"]
ENOUGH = 0.95  # share of images on which a map must match the framework's


@pytest.fixture(scope="module")
def audits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One default-methods cascading audit of every model of the corpus, run by the CLI."""
    outs = {}
    for name, entry in MANIFEST.items():
        out = tmp_path_factory.mktemp(name)
        probes = probes_file(name, out)
        code = main(["run", str(CORPUS / entry["file"]), str(probes), "--out", str(out), *FAST])
        assert code == 0, name
        outs[name] = out
    return outs


def _report(out: Path) -> AuditReport:
    return AuditReport.model_validate_json((out / "report.json").read_text())


@pytest.mark.parametrize("name", MANIFEST)
def test_each_export_is_converted_verified_and_read_in_its_own_layout(
    name: str, audits: dict[str, Path]
) -> None:
    entry, report = MANIFEST[name], _report(audits[name])
    assert report.model.input_layout == entry["input_layout"]
    assert report.conversion.argmax_agreement == 1.0
    assert report.conversion.max_abs_logit_diff <= report.conversion.atol
    channels_last = any("channels-last input" in note for note in report.notes)
    assert channels_last == (entry["input_layout"] == "NHWC")


@pytest.mark.parametrize("name", MANIFEST)
def test_gradients_equal_the_source_frameworks(name: str, audits: dict[str, Path]) -> None:
    entry = MANIFEST[name]
    expected = channels_first(stored(name)["gradient"], entry["input_layout"])
    ours = trained_map(audits[name], "gradient")
    assert ours.shape == expected.shape
    assert matching(ours, expected, rtol=1e-4) >= ENOUGH


@pytest.mark.parametrize("name", MANIFEST)
def test_gradcam_reads_the_layer_a_practitioner_names_and_equals_the_frameworks(
    name: str, audits: dict[str, Path]
) -> None:
    report = _report(audits[name])
    gradcam = next(method for method in report.methods if method.name == "gradcam")
    layer = gradcam_layer(name)
    assert str(gradcam.parameters["layer"]).startswith(f"{layer} ("), gradcam.parameters["layer"]
    expected = stored(name)["gradcam"]
    assert matching(trained_map(audits[name], "gradcam")[:, 0], expected, rtol=1e-4) >= ENOUGH


@pytest.mark.parametrize("name", [name for name in MANIFEST if name not in GRAPH_NAMES])
def test_the_source_frameworks_layer_name_chooses_the_default_target(name: str) -> None:
    loaded = load_model(CORPUS / MANIFEST[name]["file"])
    x = channels_first(stored(name)["x"][:1], loaded.module.input_layout)
    example = torch.from_numpy(np.ascontiguousarray(x))
    named = choose_target(loaded.module, example, MANIFEST[name]["gradcam_layer"])
    assert named.value == choose_target(loaded.module, example, None).value


@pytest.mark.parametrize("name", MANIFEST)
def test_guided_backprop_is_skipped_exactly_where_a_non_relu_sits(name: str, audits: dict[str, Path]) -> None:
    report = _report(audits[name])
    skipped = {method.name: method.reason for method in report.skipped_methods}
    audited = {method.name for method in report.methods}
    if MANIFEST[name]["non_relu_nonlinearities"]:
        assert set(skipped) == {"guided_backprop", "guided_gradcam"}
        assert skipped["guided_gradcam"].startswith("guided_gradcam:")
        assert "other than ReLU" in skipped["guided_backprop"]
    else:
        assert not skipped and {"guided_backprop", "guided_gradcam"} <= audited


@pytest.mark.parametrize(
    ("first", "second"),
    [("keras_cnn_nhwc", "keras_cnn_nchw"), ("keras_bn_softmax", "keras_bn_softmax_untrained")],
)
def test_layer_lists_depend_neither_on_the_input_layout_nor_on_the_weights(
    first: str, second: str, audits: dict[str, Path]
) -> None:
    layers = [[(y.name, y.kind) for y in _report(audits[name]).layers] for name in (first, second)]
    assert layers[0] == layers[1]
    assert all(not name.startswith(("Conv__", "const_fold")) for name, _ in layers[0])


def test_keras_layers_carry_their_keras_names(audits: dict[str, Path]) -> None:
    names = [layer.name for layer in _report(audits["keras_residual"]).layers]
    assert names[0] == "stem_conv" and names[-1] == "predictions"
    assert {"block1_conv1", "block2_shortcut"} <= set(names)


@pytest.mark.parametrize("name", MANIFEST)
def test_a_final_softmax_is_dropped_and_noted(name: str, audits: dict[str, Path]) -> None:
    dropped = any(note.startswith("final Softmax dropped") for note in _report(audits[name]).notes)
    assert dropped == MANIFEST[name]["ends_with_softmax"]


def test_a_softmax_behind_an_identity_and_a_batch_written_as_minus_one_are_read(tmp_path: Path) -> None:
    """Older paddle2onnx writes the dynamic batch as dim_value -1 and ends with Softmax -> Identity."""
    model = onnx.load(CORPUS / MANIFEST["paddle_mobilenet_like"]["file"])
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -1
    final = model.graph.output[0].name
    model.graph.node.append(onnx.helper.make_node("Identity", [final], ["probabilities"]))
    model.graph.output[0].name = "probabilities"
    path = tmp_path / "paddle_identity.onnx"
    onnx.save(model, path)
    out = tmp_path / "out"
    probes = probes_file("paddle_mobilenet_like", tmp_path)
    assert main(["run", str(path), str(probes), "--out", str(out), "--methods", "gradient", *FAST]) == 0
    report = _report(out)
    assert any(note.startswith("final Softmax dropped") for note in report.notes)
    expected = stored("paddle_mobilenet_like")["gradient"]
    assert matching(trained_map(out, "gradient"), expected, rtol=1e-4) >= ENOUGH


def test_a_default_audit_of_a_mobilenet_runs_and_says_which_methods_it_skipped(tmp_path: Path) -> None:
    """``saliency-audit run model.onnx probes.npz`` with no --methods, as a newcomer types it."""
    entry = MANIFEST["keras_mobilenet_like"]
    completed = subprocess.run(
        [
            str(Path(sys.executable).parent / "saliency-audit"),
            "run",
            str(CORPUS / entry["file"]),
            str(probes_file("keras_mobilenet_like", tmp_path)),
            "--out",
            str(tmp_path / "out"),
            *FAST,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr
    summary = completed.stdout
    assert "skipped (not defined on this model): guided_backprop:" in summary
    assert "skipped (not defined on this model): guided_gradcam:" in summary
    assert "HardSwish" in summary
    assert "stages:  #1 predictions  #2 Conv_1  #3 block_2  #4 block_1  #5 Conv1" in summary  # named blocks
    report = _report(tmp_path / "out")
    assert {m.name for m in report.methods} >= {"gradient", "gradcam", "integrated_gradients"}


def test_named_guided_methods_refuse_each_under_its_own_name(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    entry = MANIFEST["paddle_mobilenet_like"]
    probes = probes_file("paddle_mobilenet_like", tmp_path)
    code = main(
        [
            "run",
            str(CORPUS / entry["file"]),
            str(probes),
            "--out",
            str(tmp_path / "out"),
            "--methods",
            "gradient,guided_backprop,guided_gradcam",
            *FAST,
        ]
    )
    message = capsys.readouterr().err
    assert code == 2
    assert message.count("guided_backprop:") == 1 and message.count("guided_gradcam:") == 1
    assert "HardSwish or hard-sigmoid gating (HardSigmoid x Mul)" in message
    assert "SiLU" not in message


def test_a_stated_model_layout_overrides_what_the_graph_suggests() -> None:
    """A channels-last graph without a convolution to read it from: --model-layout NHWC says so."""
    nodes = [
        onnx.helper.make_node("Flatten", ["x"], ["f"]),
        onnx.helper.make_node("MatMul", ["f", "w"], ["y"]),
    ]
    graph = onnx.helper.make_graph(
        nodes,
        "mlp",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 8, 6, 3])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 5])],
        initializer=[onnx.numpy_helper.from_array(np.ones((144, 5), np.float32), "w")],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    assert onnx_to_torch(model).input_layout == "NHWC"  # last axis 3, second 8: channels-last by shape
    stated = onnx_to_torch(model, "NCHW")
    assert stated.input_layout == "NCHW" and stated.input_shape == (None, 8, 6, 3)
    channels_last = onnx_to_torch(model, "NHWC")
    assert channels_last.input_shape == (None, 3, 8, 6)
    x = np.random.default_rng(0).random((2, 8, 6, 3), dtype=np.float32)
    expected = x.reshape(2, -1) @ np.ones((144, 5), np.float32)
    ours = channels_last(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
    np.testing.assert_allclose(ours.detach().numpy(), expected, rtol=1e-5)
