"""The data randomization test on the digits CNN: twins trained on permuted labels, true-label controls,
the same comparison with client-supplied models, and training data refused before training."""

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import TrainedDigits
from workers.cli.main import main
from workers.core.audit_settings import AuditSettings, Outcome, Preprocessing
from workers.core.errors import AuditInputError, ProbeError
from workers.core.report import AuditReport
from workers.core.report import TestResult as ReportedTest
from workers.engine.artifacts import load_model
from workers.engine.audit import run_audit
from workers.engine.figures import MapReader
from workers.engine.training_twins import (
    DataTestInputs,
    TrainingBudgetExceeded,
    _batches,
    load_training_set,
)

DATA_ONLY = ("--tests", "data", "--methods", "gradient,gradient_x_input", "--quiet")
TRAINING_IMAGES = 800


@pytest.fixture(scope="module")
def training_data(trained_digits: TrainedDigits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("training") / "train.npz"
    data = trained_digits.data
    np.savez(path, x=data.x_train[:TRAINING_IMAGES], y=data.y_train[:TRAINING_IMAGES])
    return path


@pytest.fixture(scope="module")
def trained_twin_audit(
    trained_digits: TrainedDigits, training_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("twin-audit")
    args = [str(trained_digits.onnx_dynamo), str(trained_digits.probes), "--train-data", str(training_data)]
    two_of_each = ["--train-models", "2", "--max-train-models", "2"]  # a fixed pool: counts are known
    assert main(["run", *args, "--out", str(out), *two_of_each, *DATA_ONLY]) == 0
    return out


def _report(out: Path) -> AuditReport:
    return AuditReport.model_validate_json((out / "report.json").read_text())


def _data_result(report: AuditReport, method: str) -> ReportedTest:
    return next(t for m in report.methods if m.name == method for t in m.tests if t.test.value == "data")


def _twin_similarity(report: AuditReport) -> dict[str, float]:
    return {
        m.name: _data_result(report, m.name).stages[-1].similarity["spearman_abs"].mean
        for m in report.methods
    }


def test_twins_memorize_permuted_labels_and_know_nothing(trained_twin_audit: Path) -> None:
    info = _report(trained_twin_audit).data_randomization
    twins = [run for run in info.training if run.role == "random_label_twin"]
    controls = [run for run in info.training if run.role == "true_label_control"]
    assert [run.index for run in twins] == [run.index for run in controls] == [0, 1]
    for twin in twins:
        assert twin.train_accuracy >= 0.95 and twin.curve[-1].train_accuracy == twin.train_accuracy
        assert twin.heldout_accuracy < 0.25  # ten classes: chance is about 0.1
    assert all(control.heldout_accuracy > 0.8 for control in controls)
    assert len({run.seed for run in info.training}) == 4
    assert info.training_data.count == TRAINING_IMAGES and info.training_data.heldout == TRAINING_IMAGES // 5


def test_gradient_changes_far_more_than_gradient_x_input(trained_twin_audit: Path) -> None:
    report = _report(trained_twin_audit)
    similarity = _twin_similarity(report)
    assert similarity["gradient"] < 0.4
    assert similarity["gradient_x_input"] > 0.8
    assert _data_result(report, "gradient_x_input").verdict.outcome is Outcome.failed
    for method in report.methods:
        result = _data_result(report, method.name)
        assert result.draws == 2 and len(result.stages[-1].similarity["spearman_abs"].draw_means) == 2
        floor = result.retrain_floor["spearman_abs"]
        assert result.stages[-1].similarity["spearman_abs"].mean < floor.mean
        # trained vs each of 2 controls, and the controls with each other: 3 pairs of every image
        assert floor.undefined_values + 3 * floor.n == 3 * report.probes.count
    assert [t.test.value for t in report.methods[0].tests] == ["data"]


def test_trained_twins_are_archived_as_onnx(trained_twin_audit: Path, tmp_path: Path) -> None:
    report = _report(trained_twin_audit)
    with zipfile.ZipFile(trained_twin_audit / "maps.zip") as archive:
        manifest = {entry["path"] for entry in json.loads(archive.read("manifest.json"))["arrays"]}
        assert {
            "maps/gradient/data/random_label_twin.npy",
            "maps/gradient/data/true_label_control.npy",
        } <= manifest
        assert not any("draw-1" in path for path in manifest)  # draw 0's maps only, unless asked
        for run in report.data_randomization.training:
            (tmp_path / Path(run.archive_path).name).write_bytes(archive.read(run.archive_path))
    assert load_model(tmp_path / "random_label_twin_1.onnx").artifact.format == "onnx"


def test_client_supplied_twin_and_control_give_the_same_comparison(
    trained_digits: TrainedDigits, trained_twin_audit: Path, tmp_path: Path
) -> None:
    names = [f"{role}_{k}" for role in ("random_label_twin", "true_label_control") for k in range(2)]
    client = _client_audit(trained_digits, trained_twin_audit, names, tmp_path)
    trained = _report(trained_twin_audit)
    assert client.data_randomization.source == "client"
    assert len(client.data_randomization.twins) == len(client.data_randomization.controls) == 2
    assert all(c.max_abs_logit_diff < 1e-4 for c in client.data_randomization.twin_conversions)
    assert _twin_similarity(client) == pytest.approx(_twin_similarity(trained), abs=1e-3)
    for method in ("gradient", "gradient_x_input"):
        mine, theirs = _data_result(client, method), _data_result(trained, method)
        floors = [result.retrain_floor["spearman_abs"].mean for result in (mine, theirs)]
        assert floors[0] == pytest.approx(floors[1], abs=1e-3)
        assert mine.verdict.outcome is theirs.verdict.outcome


def test_one_client_control_decides_no_pass(
    trained_digits: TrainedDigits, trained_twin_audit: Path, tmp_path: Path
) -> None:
    """One pair of trained models cannot show the retrain floor's spread between models (0018)."""
    names = ["random_label_twin_0", "random_label_twin_1", "true_label_control_0"]
    report = _client_audit(trained_digits, trained_twin_audit, names, tmp_path)
    for method in ("gradient", "gradient_x_input"):
        verdict = _data_result(report, method).verdict
        assert verdict.retrain_margin.models == 2 and verdict.retrain_margin.ci95_low is None
        if verdict.estimate.ci95_low >= report.settings.verdict.threshold:  # too similar whatever the floor
            assert verdict.outcome is Outcome.failed
        elif verdict.cause != "no_power":  # a floor too close to the cross-image floor says so first
            assert verdict.outcome is Outcome.inconclusive and verdict.cause == "floor_spread_unknown"
            assert "two or more controls" in verdict.reason
        assert verdict.outcome is not Outcome.passed
    assert {_data_result(report, m).verdict.outcome for m in ("gradient", "gradient_x_input")} == {
        Outcome.failed,
        Outcome.inconclusive,
    }


def _client_audit(
    trained_digits: TrainedDigits, trained_twin_audit: Path, names: list[str], tmp_path: Path
) -> AuditReport:
    """The data test with the named twins and controls of ``trained_twin_audit`` sent as the client's."""
    args = []
    with zipfile.ZipFile(trained_twin_audit / "maps.zip") as archive:
        for name in names:
            (tmp_path / f"{name}.onnx").write_bytes(archive.read(f"models/{name}.onnx"))
            args += ["--twin" if "twin" in name else "--control", str(tmp_path / f"{name}.onnx")]
    out = tmp_path / "client"
    command = ["run", str(trained_digits.onnx_dynamo), str(trained_digits.probes), *args, "--out", str(out)]
    assert main([*command, *DATA_ONLY]) == 0
    return _report(out)


def _audit_with_training(
    trained_digits: TrainedDigits, data: Path, settings: AuditSettings, out: Path, events: list | None = None
) -> None:
    run_audit(
        trained_digits.onnx_dynamo,
        trained_digits.probes,
        settings,
        out,
        on_progress=None if events is None else events.append,
        data_inputs=DataTestInputs(training_data=data),
    )


def _refused(trained_digits: TrainedDigits, data: Path, tmp_path: Path, match: str) -> None:
    events: list[object] = []
    with pytest.raises(AuditInputError, match=match):
        settings = AuditSettings(methods=["gradient"], tests=["data"])
        _audit_with_training(trained_digits, data, settings, tmp_path / "out", events)
    assert events == []  # refused during the checks: no model was trained, no map computed
    assert not (tmp_path / "out" / "report.json").exists()


@pytest.mark.parametrize(
    ("x_shape", "labels", "match"),
    [
        ((100, 1, 16, 16), np.arange(100) % 12, "labels go up to 11, but the model has 10 classes"),
        ((100, 1, 16, 16), np.full(100, 3), "every training image has label 3"),
        ((100, 1, 8, 8), np.arange(100) % 10, r"the model expects input of shape \[N, 1, 16, 16\]"),
        ((10, 1, 16, 16), np.arange(10), "10 training images; at least 50"),
    ],
)
def test_bad_training_data_is_refused_before_training(
    trained_digits: TrainedDigits, tmp_path: Path, x_shape: tuple[int, ...], labels: np.ndarray, match: str
) -> None:
    data = tmp_path / "bad.npz"
    np.savez(data, x=np.random.default_rng(0).random(x_shape, dtype=np.float32), y=labels)
    _refused(trained_digits, data, tmp_path, match)


def test_unlabelled_training_data_is_refused(trained_digits: TrainedDigits, tmp_path: Path) -> None:
    data = tmp_path / "x.npz"
    np.savez(data, x=trained_digits.data.x_train[:100])
    _refused(trained_digits, data, tmp_path, "training data needs labels")


def test_zip_of_class_folders_is_read_and_escapes_are_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "train.zip"
    with zipfile.ZipFile(bundle, "w") as archive:
        for index in range(60):
            image = tmp_path / "image.png"
            Image.fromarray(np.full((16, 16), index * 4, dtype=np.uint8)).save(image)
            archive.write(image, f"{index % 3}/{index}.png")
        archive.writestr("README.txt", "ignored")
    data = load_training_set(bundle, Preprocessing(), (None, 1, 16, 16), classes=10)
    assert data.x.shape == (60, 1, 16, 16) and sorted(set(data.labels.tolist())) == [0, 1, 2]
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../0/escape.png", b"")
    with pytest.raises(ProbeError, match="points outside the archive"):
        load_training_set(evil, Preprocessing(), (None, 1, 16, 16), classes=10)


def test_a_twin_that_cannot_memorize_in_budget_is_a_clear_failure(
    trained_digits: TrainedDigits, training_data: Path, tmp_path: Path
) -> None:
    settings = AuditSettings(methods=["gradient"], tests=["data"], training={"max_epochs": 2})
    with pytest.raises(
        TrainingBudgetExceeded, match=r"random label twin reached .* after 2 epochs.*must reach 95%"
    ):
        _audit_with_training(trained_digits, training_data, settings, tmp_path)


def test_data_test_inputs_must_match_the_requested_tests(
    trained_digits: TrainedDigits, training_data: Path, tmp_path: Path
) -> None:
    with pytest.raises(AuditInputError, match="request test 'data' together with one of them"):
        run_audit(trained_digits.onnx_dynamo, trained_digits.probes, AuditSettings(tests=["data"]), tmp_path)
    with pytest.raises(AuditInputError, match="true-label controls go with client-supplied twins"):
        DataTestInputs(controls=(trained_digits.onnx_dynamo,), training_data=training_data)
    with pytest.raises(AuditInputError, match="true-label controls go with client-supplied twins"):
        DataTestInputs(controls=(trained_digits.onnx_dynamo,))


def test_a_holdout_that_leaves_too_little_to_train_on_is_refused(
    trained_digits: TrainedDigits, training_data: Path, tmp_path: Path
) -> None:
    settings = AuditSettings(methods=["gradient"], tests=["data"], training={"holdout_fraction": 0.99})
    with pytest.raises(ProbeError, match="leaves 8 images to train on"):
        _audit_with_training(trained_digits, training_data, settings, tmp_path)


def test_a_batch_of_one_is_never_trained_alone() -> None:
    sizes = [len(batch) for batch in _batches(torch.arange(129), 64)]
    assert sizes == [64, 65]
    assert [len(batch) for batch in _batches(torch.arange(130), 64)] == [64, 64, 2]


def test_settings_file_with_training_data_adds_the_data_test(
    trained_digits: TrainedDigits, training_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"methods": ["gradient"], "training": {"max_epochs": 1}}))
    args = [str(trained_digits.onnx_dynamo), str(trained_digits.probes), "--train-data", str(training_data)]
    assert main(["run", *args, "--settings", str(settings), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "random label twin reached" in capsys.readouterr().err  # the data test ran and trained


def test_the_html_report_shows_the_data_test_beside_a_twin_and_a_control(trained_twin_audit: Path) -> None:
    figures = {path.name for path in (trained_twin_audit / "figures").iterdir()}
    assert {"verdicts.png", "data-absolute.png", "data-diverging.png", "data-similarity.png"} <= figures
    reader = MapReader(trained_twin_audit / "maps.zip", 3)
    try:
        # columns: trained, the first twin, the first control (the archive keeps the first draw's maps)
        assert [len(maps) for maps in reader.controls("gradient")] == [3]
        twin = reader.maps("gradient", "data", 1)
        assert twin is not None and len(twin) == 3
    finally:
        reader.close()
    page = (trained_twin_audit / "report.html").read_text()
    assert 'data-test="data"' in page and "Data randomization: maps, absolute" in page
