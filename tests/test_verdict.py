"""The pass/fail rule, on hand-made stages."""

import pytest

from workers.engine.report import Stage, Summary
from workers.engine.settings import Metric, RandomizationTest, VerdictRule
from workers.engine.verdict import judge

IMAGES = 10


def _summary(mean: float | None, half_width: float = 0.02) -> Summary:
    if mean is None:
        return Summary(mean=None, std=None, ci95_low=None, ci95_high=None, n=0, n_undefined=IMAGES)
    return Summary(
        mean=mean, std=0.1, ci95_low=mean - half_width, ci95_high=mean + half_width, n=IMAGES, n_undefined=0
    )


def _stage(index: int, similarity: float | None, floor: float | None = 0.1, degenerate: int = 0) -> Stage:
    return Stage(
        index=index,
        label=f"stage {index}",
        randomized_layers=[],
        similarity={metric: _summary(similarity) for metric in Metric},
        cross_image_floor={metric: _summary(floor) for metric in Metric},
        degenerate_maps=degenerate,
    )


def test_cascading_is_judged_with_every_layer_randomized_on_the_upper_bound() -> None:
    stages = [_stage(0, 1.0), _stage(1, 0.9), _stage(2, 0.47)]
    verdict = judge(RandomizationTest.cascading, stages, VerdictRule(), IMAGES)
    assert (verdict.passed, verdict.stage, verdict.upper_bound) == (True, 2, 0.49)
    stages[2] = _stage(2, 0.49)  # mean below 0.5, upper bound 0.51 not
    assert not judge(RandomizationTest.cascading, stages, VerdictRule(), IMAGES).passed


def test_independent_is_judged_with_the_top_layer_alone() -> None:
    stages = [_stage(0, 1.0), _stage(1, 0.9), _stage(2, 0.1)]
    verdict = judge(RandomizationTest.independent, stages, VerdictRule(threshold=0.95), IMAGES)
    assert (verdict.passed, verdict.stage) == (True, 1)
    assert not judge(RandomizationTest.independent, stages, VerdictRule(), IMAGES).passed


def test_constant_maps_after_randomization_pass_but_constant_trained_maps_do_not() -> None:
    all_constant = [_stage(0, 1.0), _stage(1, None, None, degenerate=IMAGES)]
    verdict = judge(RandomizationTest.cascading, all_constant, VerdictRule(), IMAGES)
    assert verdict.passed and verdict.upper_bound is None and "constant" in verdict.explanation
    undefined = [_stage(0, None), _stage(1, None, None, degenerate=0)]
    assert not judge(RandomizationTest.cascading, undefined, VerdictRule(), IMAGES).passed
    constant_throughout = [_stage(0, None, None, degenerate=IMAGES), _stage(1, None, None, degenerate=IMAGES)]
    verdict = judge(RandomizationTest.cascading, constant_throughout, VerdictRule(), IMAGES)
    assert not verdict.passed and "trained maps are constant" in verdict.explanation


def test_a_failure_at_the_cross_image_floor_is_explained() -> None:
    at_floor = [_stage(0, 1.0), _stage(1, 0.53, floor=0.51)]
    verdict = judge(RandomizationTest.cascading, at_floor, VerdictRule(), IMAGES)
    assert not verdict.passed and "shared by all images" in verdict.explanation
    above_floor = [_stage(0, 1.0), _stage(1, 0.9, floor=0.4)]
    assert (
        "shared by all images"
        not in judge(RandomizationTest.cascading, above_floor, VerdictRule(), IMAGES).explanation
    )


def test_data_verdict_needs_the_twin_below_the_retrain_floor_by_the_gap() -> None:
    twin = [_stage(0, 1.0), _stage(1, 0.3)]  # upper bound 0.32
    floor = {metric: _summary(0.6) for metric in Metric}
    verdict = judge(RandomizationTest.data, twin, VerdictRule(), IMAGES, retrain_floor=floor)
    assert verdict.passed and verdict.threshold == pytest.approx(0.4)
    close_floor = {metric: _summary(0.45) for metric in Metric}  # limit 0.25: 0.32 is too close
    assert not judge(RandomizationTest.data, twin, VerdictRule(), IMAGES, retrain_floor=close_floor).passed
    assert judge(RandomizationTest.data, twin, VerdictRule(), IMAGES).threshold == 0.5
