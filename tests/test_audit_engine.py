"""The engine called in-process, as the workers will call it: progress, cancellation, atomic outputs."""

import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import TrainedDigits
from workers.core.audit_settings import AuditSettings
from workers.core.errors import AuditCancelled, AuditInputError, MethodUnsupportedError
from workers.engine.audit import Progress, run_audit
from workers.engine.preparation import cross_image_partners, nondeterminism_noted

QUICK = AuditSettings(methods=["gradient", "gradcam"], tests=["cascading"], batch_size=16, draws=2)


def test_progress_total_is_the_most_work_and_never_moves_while_done_only_grows(
    trained_digits: TrainedDigits, tmp_path: Path
) -> None:
    events: list[Progress] = []
    run_audit(trained_digits.onnx_dynamo, trained_digits.probes, QUICK, tmp_path, on_progress=events.append)
    most = 2 * (1 + QUICK.max_draws * 5)  # per method: the trained maps, then up to 9 draws of 5 layers
    done = [event.done for event in events]
    assert {event.total for event in events} == {most}
    assert done == sorted(set(done))  # strictly increasing
    assert done[-1] == most
    assert events[0].phase == "gradient: trained model"
    worked = [event.phase for event in events if "settled" not in event.phase]
    assert len(worked) == 2 * (1 + QUICK.draws * 5)  # both verdicts settled after the first 2 draws
    assert events[-1].phase == "cascading: every verdict settled"


def test_every_draw_is_archived_on_request(trained_digits: TrainedDigits, tmp_path: Path) -> None:
    one_method = {"methods": ["gradient"], "archive_all_draws": True}
    settings = AuditSettings.model_validate(QUICK.model_dump() | one_method)
    report = run_audit(trained_digits.onnx_dynamo, trained_digits.probes, settings, tmp_path)
    with zipfile.ZipFile(tmp_path / "maps.zip") as archive:
        names = set(archive.namelist())
    assert {"maps/gradient/cascading/05.npy", "maps/gradient/cascading/draw-1/05.npy"} <= names
    stage = report.methods[0].tests[0].stages[-1].similarity["spearman_abs"]
    assert len(stage.draw_means) == 2 and stage.draw_means[0] != stage.draw_means[1]


def test_cancel_between_stages_leaves_no_outputs(trained_digits: TrainedDigits, tmp_path: Path) -> None:
    asked = 0

    def cancel_on_third_question() -> bool:
        nonlocal asked
        asked += 1
        return asked >= 3

    with pytest.raises(AuditCancelled):
        run_audit(
            trained_digits.onnx_dynamo,
            trained_digits.probes,
            QUICK,
            tmp_path,
            should_cancel=cancel_on_third_question,
        )
    assert asked == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_unsupported_methods_are_refused_before_any_work(
    trained_digits: TrainedDigits, tmp_path: Path
) -> None:
    settings = AuditSettings(methods=["gradient", "gradcam"], gradcam_layer="fc1")
    events: list[Progress] = []
    with pytest.raises(MethodUnsupportedError, match="gradcam"):
        run_audit(
            trained_digits.onnx_dynamo, trained_digits.probes, settings, tmp_path, on_progress=events.append
        )
    assert events == []


@pytest.mark.parametrize(
    ("device", "message"), [("foo", "'foo' is not a torch device"), ("meta", "not supported")]
)
def test_a_refused_run_leaves_no_earlier_results_behind(
    trained_digits: TrainedDigits, tmp_path: Path, device: str, message: str
) -> None:
    (tmp_path / "report.json").write_text("{}")
    (tmp_path / "maps.zip").write_bytes(b"old")
    with pytest.raises(AuditInputError, match=message):
        settings = QUICK.model_copy(update={"device": device})
        run_audit(trained_digits.onnx_dynamo, trained_digits.probes, settings, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_noise_depends_on_the_method_not_its_place_in_the_list(
    trained_digits: TrainedDigits, tmp_path: Path
) -> None:
    def smoothgrad_result(methods: list[str], out: Path) -> dict:
        settings = AuditSettings(methods=methods, tests=["cascading"], noise_samples=4)
        report = run_audit(trained_digits.onnx_dynamo, trained_digits.probes, settings, out)
        result = next(m for m in report.methods if m.name == "smoothgrad").model_dump(mode="json")
        result.pop("seconds")
        return result

    assert smoothgrad_result(["smoothgrad"], tmp_path / "a") == smoothgrad_result(
        ["gradient", "smoothgrad"], tmp_path / "b"
    )


def test_cross_image_partners_are_other_images_of_other_classes() -> None:
    classes = np.repeat(np.arange(4), 5)  # sorted by class, as a probe folder is
    partners = cross_image_partners(classes, seed=0)
    assert (partners != np.arange(20)).all()
    assert (classes[partners] != classes).all()
    assert not np.array_equal(partners, np.roll(np.arange(20), 1))
    assert np.array_equal(partners, cross_image_partners(classes, seed=0))
    single_class = cross_image_partners(np.zeros(6, dtype=np.int64), seed=1)
    assert (single_class != np.arange(6)).all()


def test_gpu_ops_without_a_deterministic_kernel_are_named_and_other_warnings_pass() -> None:
    with pytest.warns(UserWarning, match="unrelated"), nondeterminism_noted(torch.device("cuda")) as notes:
        warnings.warn(
            "upsample_bilinear2d_backward_out_cuda does not have a deterministic implementation, but you "
            "set 'torch.use_deterministic_algorithms(True, warn_only=True)'.",
            UserWarning,
            stacklevel=1,
        )
        warnings.warn("unrelated", UserWarning, stacklevel=1)
    assert len(notes) == 1 and "upsample_bilinear2d_backward_out_cuda" in notes[0]
    with nondeterminism_noted(torch.device("cpu")) as notes:
        pass
    assert notes == []
