"""Random logit (Sixt et al. 2020): the map of the explained class against the map of another class.
On the digits CNN Gradient's and GradCAM's maps differ by class; Guided Backprop's barely do."""

import numpy as np
import pytest
import torch

from tests.conftest import TrainedDigits
from workers.core.audit_settings import AuditSettings, Metric, Outcome, RandomizationTest
from workers.core.summary import format_summary
from workers.engine.audit import run_audit
from workers.engine.checks.logit import other_classes
from workers.engine.html_report import write_html_report


@pytest.fixture(scope="module")
def logit_audit(trained_digits: TrainedDigits, tmp_path_factory: pytest.TempPathFactory):
    settings = AuditSettings(
        methods=["gradient", "guided_backprop", "gradcam", "edge_detector"],
        tests=["random_logit", "input_invariance"],
        draws=2,
        batch_size=16,
    )
    out = tmp_path_factory.mktemp("random-logit")
    return run_audit(trained_digits.onnx_legacy, trained_digits.probes, settings, out), out


def _result(report, name: str):
    method = next(m for m in report.methods if m.name == name)
    return next(t for t in method.tests if t.test is RandomizationTest.random_logit)


def test_gradient_and_gradcam_maps_depend_on_the_class_explained(logit_audit) -> None:
    report, _ = logit_audit
    for name in ("gradient", "gradcam"):
        verdict = _result(report, name).verdict
        assert verdict.outcome is Outcome.passed, (name, verdict.reason)
        assert verdict.metric is Metric.ssim and verdict.estimate.mean < 0.35, name


def test_guided_backprop_gives_nearly_the_same_map_for_any_class(logit_audit) -> None:
    report, _ = logit_audit
    result = _result(report, "guided_backprop")
    assert result.verdict.outcome is Outcome.failed
    assert result.verdict.estimate.mean > 0.6
    other = result.stages[-1]
    assert other.cross_image_floor[Metric.ssim].mean < 0.3  # far below: the maps share the image, not noise


def test_baselines_are_compared_never_judged_and_the_summary_shows_the_table(logit_audit) -> None:
    report, out = logit_audit
    edges = _result(report, "edge_detector")
    assert edges.verdict is None and edges.stages[-1].similarity[Metric.ssim].mean == pytest.approx(1.0)
    summary = format_summary(report)
    assert "random logit: mean ssim between the maps of the explained class" in summary
    assert "Random logit judges ssim against 0.5" in summary
    assert write_html_report(report, out).exists()  # the page and its figures take the new tests


def test_other_classes_are_uniform_over_the_other_classes_and_seeded() -> None:
    targets = torch.arange(10).repeat(2000)
    drawn = other_classes(targets, 10, seed=0, draw=0)
    assert not bool((drawn == targets).any())
    counts = np.bincount(((drawn - targets) % 10).numpy(), minlength=10)
    assert counts[0] == 0 and counts[1:].min() > 0.8 * len(targets) / 9
    assert torch.equal(drawn, other_classes(targets, 10, seed=0, draw=0))
    assert not torch.equal(drawn, other_classes(targets, 10, seed=0, draw=1))
    assert not torch.equal(drawn, other_classes(targets, 10, seed=1, draw=0))


def test_the_new_tests_are_chosen_by_name() -> None:
    settings = AuditSettings.model_validate({"tests": ["input_invariance", "random_logit"]})
    assert settings.tests == [RandomizationTest.input_invariance, RandomizationTest.random_logit]
    assert settings.random_logit_metric is Metric.ssim and settings.invariance_shift == -1.0


def test_the_cli_takes_the_new_tests_and_their_settings() -> None:
    from workers.cli.main import _build_parser, _settings

    args = _build_parser().parse_args(
        [
            "run",
            "model.onnx",
            "probes.npz",
            "--tests",
            "input_invariance,random_logit,smooth_mprt,efficient_mprt",
            "--invariance-shift",
            "0.5",
            "--random-logit-metric",
            "spearman_abs",
            "--smooth-mprt-samples",
            "10",
            "--smooth-mprt-order",
            "top_down",
            "--efficient-mprt-min-share",
            "0.3",
        ]
    )
    settings = _settings(args)
    assert settings.tests[-1] is RandomizationTest.efficient_mprt and settings.invariance_shift == 0.5
    assert settings.random_logit_metric is Metric.spearman_abs and settings.smooth_mprt_samples == 10
    assert settings.smooth_mprt_order.value == "top_down" and settings.efficient_mprt_min_share == 0.3


def test_a_two_class_model_has_one_draw_and_says_so() -> None:
    """Every draw would explain the same other class with the same noise: more draws add nothing."""
    from workers.engine.checks.base import CheckContext
    from workers.engine.checks.logit import RandomLogit

    settings = AuditSettings(draws=3, max_draws=9)
    targets = torch.tensor([0, 1, 1, 0])
    two = RandomLogit(CheckContext(torch.nn.Identity(), [], settings, None, torch.zeros(4, 2), targets, 2))
    assert two.draws() == two.max_draws() == 1
    (stage,) = two.stage_models(0)
    assert torch.equal(stage.targets, 1 - targets) and "one draw" in stage.note
    ten = RandomLogit(CheckContext(torch.nn.Identity(), [], settings, None, torch.zeros(4, 2), targets, 10))
    assert (ten.draws(), ten.max_draws()) == (3, 9)
