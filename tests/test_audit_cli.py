"""The whole audit from the command line, on a CNN trained at test time: the paper's result, the report
and archive a pipeline reads, the exit codes it gates on, and the refusals a user sees."""

import hashlib
import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import TrainedDigits
from workers.cli.main import main
from workers.core.report import AuditReport

FAST = ["--ig-steps", "16", "--noise-samples", "8", "--quiet", "--draws", "1"]


def _report(out: Path) -> AuditReport:
    return AuditReport.model_validate_json((out / "report.json").read_text())


def _outcome(report: AuditReport, method: str, test: str) -> str | None:
    result = next(t for m in report.methods if m.name == method for t in m.tests if t.test.value == test)
    return None if result.verdict is None else result.verdict.outcome.value


def _curve(
    report: AuditReport, method: str, test: str = "cascading", metric: str = "spearman_abs"
) -> list[float]:
    result = next(m for m in report.methods if m.name == method)
    stages = next(t for t in result.tests if t.test.value == test).stages
    return [stage.similarity[metric].mean for stage in stages]


@pytest.fixture(scope="module")
def paper_audit(trained_digits: TrainedDigits, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One run of the installed console script, as a pipeline would call it."""
    out = tmp_path_factory.mktemp("paper-audit")
    methods = (
        "gradient,gradient_x_input,integrated_gradients,smoothgrad,guided_backprop,gradcam,edge_detector"
    )
    completed = subprocess.run(
        [
            str(Path(sys.executable).parent / "saliency-audit"),
            "run",
            str(trained_digits.onnx_dynamo),
            str(trained_digits.probes),
            "--out",
            str(out),
            "--methods",
            methods,
            *FAST,
            "--draws",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return out, completed.stdout


def test_gradient_decorrelates_under_cascading_randomization(paper_audit: tuple[Path, str]) -> None:
    report = _report(paper_audit[0])
    gradient = _curve(report, "gradient")
    assert gradient[0] == pytest.approx(1.0)
    assert gradient[-1] < 0.3
    assert gradient[1] < 0.6  # randomizing the logit layer alone already changes the map a lot
    assert _outcome(report, "gradient", "cascading") == _outcome(report, "gradcam", "cascading") == "pass"


def test_guided_backprop_stays_similar_while_the_top_layers_are_randomized(
    paper_audit: tuple[Path, str],
) -> None:
    report = _report(paper_audit[0])
    guided, gradient = _curve(report, "guided_backprop"), _curve(report, "gradient")
    assert all(g > p + 0.3 for g, p in zip(guided[1:3], gradient[1:3], strict=True))
    assert guided[1] > 0.8
    assert guided[-1] < 0.6  # low only once the bottom layers go: judging the last stage would pass it
    assert _outcome(report, "guided_backprop", "cascading") == "fail"
    verdict = next(t.verdict for m in report.methods for t in m.tests if m.name == "guided_backprop")
    assert verdict.estimate.mean > 0.6 and "randomized stages" in verdict.statistic
    independent = _outcome(report, "guided_backprop", "independent")
    assert independent == "fail"


def test_gradient_x_input_stays_high_on_zero_backgrounds(paper_audit: tuple[Path, str]) -> None:
    report = _report(paper_audit[0])
    for method in ("gradient_x_input", "integrated_gradients"):
        assert min(_curve(report, method)) > 0.8
        assert min(_curve(report, method, "independent")) > 0.8


def test_report_carries_calibration_noise_floor_and_baselines(
    paper_audit: tuple[Path, str], trained_digits: TrainedDigits
) -> None:
    report = _report(paper_audit[0])
    methods = {m.name: m for m in report.methods}
    for method in methods.values():
        for metric in ("spearman_abs", "spearman_signed"):
            assert abs(method.random_mask_calibration[metric].mean) < 0.05
        stage = method.tests[0].stages[-1]
        summary = stage.similarity["spearman_abs"]
        assert summary.n + summary.n_undefined == report.probes.count
        if method.name != "gradcam":  # randomized GradCAM maps may be constant: undefined, counted
            assert summary.n == report.probes.count
        if summary.n > 1:
            assert summary.ci95_low <= summary.mean <= summary.ci95_high
    assert methods["smoothgrad"].self_similarity is not None
    assert 0.3 < methods["smoothgrad"].self_similarity["spearman_abs"].mean < 1.0
    assert methods["gradient"].self_similarity is None
    assert _curve(report, "edge_detector") == pytest.approx([1.0] * (len(report.layers) + 1))
    assert methods["edge_detector"].edge_detector_similarity["spearman_abs"].mean == pytest.approx(1.0)
    assert [layer.name for layer in report.layers] == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    assert report.conversion.max_abs_logit_diff < 1e-4 and report.conversion.argmax_agreement == 1.0
    assert report.probes.trained_accuracy > 0.9
    assert report.model.sha256 == hashlib.sha256(trained_digits.onnx_dynamo.read_bytes()).hexdigest()


def test_archive_holds_every_map_with_a_manifest(paper_audit: tuple[Path, str]) -> None:
    out, _ = paper_audit
    report = _report(out)
    with zipfile.ZipFile(out / "maps.zip") as archive:
        manifest = json.loads(archive.read("manifest.json"))
        assert json.loads(archive.read("report.json")) == json.loads((out / "report.json").read_text())
        entries = {entry["path"]: entry for entry in manifest["arrays"]}
        expected = {"inputs.npy", "targets.npy"}
        for method in report.methods:
            expected.add(f"maps/{method.name}/trained.npy")
            for test in method.tests:
                expected |= {
                    f"maps/{method.name}/{test.test.value}/{s.index:02d}.npy" for s in test.stages[1:]
                }
        assert set(entries) == expected
        for path, entry in entries.items():
            data = archive.read(path)
            assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        maps = np.load(archive.open("maps/gradcam/cascading/05.npy"))
        assert maps.shape == (report.probes.count, 1, 16, 16) and maps.dtype == np.float32


def test_summary_table_shows_draws_outcomes_and_reasons(paper_audit: tuple[Path, str]) -> None:
    _, stdout = paper_audit
    assert "cascading randomization: mean spearman_abs vs trained maps over images and draws" in stdout
    rows = {line.split()[0]: line for line in stdout.splitlines() if line.strip()}
    assert rows["gradient_x_input"].endswith("FAIL") and rows["gradient"].endswith("PASS")
    assert rows["gradient"].split()[1] in ("3", "6", "9")  # each row says how many draws it took
    assert rows["edge_detector"].endswith("baseline")
    assert "why:" in stdout and "gradient_x_input, cascading: mean 0.9" in stdout
    assert "Parameter tests judge the 'curve'" in stdout and "data test" not in stdout  # none ran


def _run(*args: str | Path) -> int:
    return main(["run", *map(str, args), *FAST])


def _numbers(report: AuditReport) -> dict:
    dumped = report.model_dump(mode="json")
    for method in dumped["methods"]:
        method.pop("seconds")
    return {key: dumped[key] for key in ("methods", "layers", "conversion")}


def test_same_seed_gives_the_same_numbers_and_both_exporters_agree(
    trained_digits: TrainedDigits, tmp_path: Path
) -> None:
    args = ("--methods", "gradient,smoothgrad", "--tests", "cascading")
    assert _run(trained_digits.onnx_dynamo, trained_digits.probes, "--out", tmp_path / "a", *args) == 0
    assert _run(trained_digits.onnx_dynamo, trained_digits.probes, "--out", tmp_path / "b", *args) == 0
    assert _numbers(_report(tmp_path / "a")) == _numbers(_report(tmp_path / "b"))
    assert _run(trained_digits.onnx_legacy, trained_digits.probes, "--out", tmp_path / "c", *args) == 0
    for method in ("gradient", "smoothgrad"):
        legacy, dynamo = _curve(_report(tmp_path / "c"), method), _curve(_report(tmp_path / "a"), method)
        assert legacy == pytest.approx(dynamo, abs=1e-3)


def test_torchscript_and_torch_export_artifacts_are_audited(
    trained_digits: TrainedDigits, tmp_path: Path
) -> None:
    scripted = tmp_path / "model.pt"
    torch.jit.script(trained_digits.model).save(str(scripted))
    exported = tmp_path / "model.pt2"
    example = (torch.zeros(2, 1, 16, 16),)
    torch.export.save(
        torch.export.export(trained_digits.model, example, dynamic_shapes=({0: torch.export.Dim("batch")},)),
        exported,
    )
    curves = {}
    for artifact, kind in ((scripted, "torchscript"), (exported, "torch_export")):
        out = tmp_path / kind
        assert (
            _run(
                artifact, trained_digits.probes, "--out", out, "--methods", "gradient", "--tests", "cascading"
            )
            == 0
        )
        report = _report(out)
        assert report.model.format == kind
        curves[kind] = _curve(report, "gradient")
    assert curves["torchscript"] == pytest.approx(curves["torch_export"], abs=1e-3)


def test_fail_on_gates_pipelines_on_model_based_methods_only(
    trained_digits: TrainedDigits, tmp_path: Path
) -> None:
    common = (trained_digits.onnx_dynamo, trained_digits.probes, "--tests", "cascading")
    baseline = ("--methods", "gradient,edge_detector")
    assert _run(*common, "--out", tmp_path / "ok", *baseline, "--fail-on-verdict") == 0
    assert _run(*common, "--out", tmp_path / "ok2", *baseline, "--fail-on", "fail,inconclusive") == 0
    assert _run(*common, "--out", tmp_path / "bad", "--methods", "gradient_x_input", "--fail-on-verdict") == 1
    unsure = (*common, "--methods", "gradient", "--min-defined-images", "1000")  # too few images: unsure
    assert _run(*unsure, "--out", tmp_path / "unsure", "--fail-on-verdict") == 0
    assert _run(*unsure, "--out", tmp_path / "unsure2", "--fail-on", "inconclusive") == 1
    assert _outcome(_report(tmp_path / "unsure2"), "gradient", "cascading") == "inconclusive"


def test_fail_on_refuses_unknown_outcomes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "m.onnx", "p.npz", "--fail-on", "pass"])
    assert exit_info.value.code == 2 and "every good audit" in capsys.readouterr().err


def test_target_policies_are_recorded(trained_digits: TrainedDigits, tmp_path: Path) -> None:
    for policy in ("label", "randomized_argmax"):
        out = tmp_path / policy
        args = ("--methods", "gradient", "--tests", "independent", "--target", policy)
        assert _run(trained_digits.onnx_dynamo, trained_digits.probes, "--out", out, *args) == 0
        report = _report(out)
        assert report.settings.target.value == policy
        assert ("labels" if policy == "label" else "argmax") in report.target_policy_note


def _refusal(capsys: pytest.CaptureFixture[str], model: Path, probes: Path, *extra: str) -> str:
    assert _run(model, probes, "--out", model.parent / "out", *extra) == 2
    error = capsys.readouterr().err
    assert error.startswith("saliency-audit: error: ") and "Traceback" not in error
    assert not (model.parent / "out" / "report.json").exists()
    return error


def test_broken_onnx_is_refused(trained_digits: TrainedDigits, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(trained_digits.onnx_dynamo.read_bytes()[:500])
    assert "broken.onnx" in _refusal(capsys, broken, trained_digits.probes)


def test_pickled_model_is_refused(trained_digits: TrainedDigits, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    pickled = tmp_path / "model.pt"
    torch.save(trained_digits.model, pickled)
    assert "pickle" in _refusal(capsys, pickled, trained_digits.probes).lower()
    raw = tmp_path / "model.pkl"
    raw.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    assert "pickle" in _refusal(capsys, raw, trained_digits.probes).lower()


def test_probe_shape_mismatch_names_the_expected_shape(
    trained_digits: TrainedDigits, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    small = tmp_path / "small.npy"
    np.save(small, np.zeros((4, 1, 8, 8), np.float32))
    error = _refusal(capsys, trained_digits.onnx_dynamo, small)
    assert "[4, 1, 8, 8]" in error and "[N, 1, 16, 16]" in error


def test_label_target_without_labels_is_refused(
    trained_digits: TrainedDigits, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    unlabelled = tmp_path / "x.npy"
    np.save(unlabelled, trained_digits.data.x_test[:4])
    assert "needs labelled probes" in _refusal(
        capsys, trained_digits.onnx_dynamo, unlabelled, "--target", "label"
    )


@pytest.mark.parametrize(
    "command", [["--help"], ["run", "--help"], ["demo", "--help"], ["methods"], ["schema"]]
)
def test_commands_that_need_no_model_start_without_torch(command: list[str]) -> None:
    code = (
        "import sys\nfrom workers.cli.main import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code, *command], check=True, capture_output=True)


def test_demo_needs_no_file_and_writes_the_html_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--methods", "gradient,edge_detector", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.html'}" in printed
    assert "The data test judges the twins" in printed  # the legend explains the tests that ran
    report = _report(out)
    assert [t.test.value for t in report.methods[0].tests] == ["cascading", "independent", "data"]
    assert report.data_randomization is not None and report.data_randomization.source == "trained"
    assert {"report.html", "report.json", "maps.zip"} <= {p.name for p in out.iterdir()}
    assert "data-absolute.png" in {p.name for p in (out / "figures").iterdir()}
    assert 'data-method="gradient" data-test="data"' in (out / "report.html").read_text()
