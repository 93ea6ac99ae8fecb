"""The engine called in-process, as the workers will call it: progress, cancellation, atomic outputs."""

from pathlib import Path

import pytest

from tests.conftest import TrainedDigits
from workers.engine.audit import AuditCancelled, Progress, run_audit
from workers.engine.errors import MethodUnsupportedError
from workers.engine.settings import AuditSettings

QUICK = AuditSettings(methods=["gradient", "gradcam"], tests=["cascading"], batch_size=16)


def test_progress_counts_every_stage_of_every_method(trained_digits: TrainedDigits, tmp_path: Path) -> None:
    events: list[Progress] = []
    run_audit(trained_digits.onnx_dynamo, trained_digits.probes, QUICK, tmp_path, on_progress=events.append)
    layers = 5
    assert [event.done for event in events] == list(range(1, 2 * (1 + layers) + 1))
    assert {event.total for event in events} == {2 * (1 + layers)}
    assert events[0].phase == "gradient: trained model"
    assert events[-1].phase == "gradcam: cascading conv1 and above"


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
