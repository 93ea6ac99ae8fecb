"""Pass, fail and inconclusive, on hand-made similarity tables: the rule over the whole curve, the layers the
independent test names, the data test's retrain floor and power, and every reason to be unsure."""

import numpy as np
import pytest
from torch import nn

from workers.core.audit_settings import AuditSettings, Metric, Outcome, RandomizationTest, VerdictRule
from workers.core.report import Stage
from workers.engine.checks import CheckContext, RetrainFloor, StageValues, create_check
from workers.engine.layers import Layer
from workers.engine.parameter_stages import StageModel
from workers.engine.similarity import prepare
from workers.engine.statistics import summarize, summarize_all

IMAGES, DRAWS = 20, 3
LAYERS = [Layer(i, f"layer{i}", f"layer{i}", "Linear", 10) for i in range(4)]


def _table(mean: float, spread: float = 0.05, seed: int = 0) -> np.ndarray:
    """[draws, images] similarities around ``mean``."""
    return mean + spread * np.random.default_rng(seed).standard_normal((DRAWS, IMAGES))


def _maps(count: int = IMAGES, non_finite: int = 0):  # type: ignore[no-untyped-def]
    maps = np.random.default_rng(1).random((count, 1, 8, 8))
    maps[:non_finite] = np.nan
    return prepare(maps)


def _stage(index: int, table: np.ndarray, cross: float = 0.1, non_finite: int = 0) -> StageValues:
    layer = LAYERS[-index]
    values = StageValues.of(StageModel(index, f"{layer.name} only", [layer], nn.Identity(), f"{index:02d}"))
    for draw, row in enumerate(table):
        similarity = {metric: row.copy() for metric in Metric}
        floor = {metric: np.full(len(row), cross) for metric in Metric}
        values.add(similarity, floor, _maps(len(row), non_finite if draw == 0 else 0))
    return values


def _trained(non_finite: int = 0) -> Stage:
    maps = _maps(IMAGES, non_finite)
    return Stage(
        index=0,
        label="trained model",
        randomized_layers=[],
        similarity=summarize_all({metric: np.ones(IMAGES) for metric in Metric}),
        cross_image_floor=summarize_all({metric: np.full(IMAGES, 0.1) for metric in Metric}),
        degenerate_maps=0,
        non_finite_maps=int(maps.non_finite.sum()),
    )


def _judge(test: RandomizationTest, stages: list[StageValues], rule: VerdictRule | None = None, **kw):  # type: ignore[no-untyped-def]
    settings = AuditSettings(verdict=rule or VerdictRule())
    check = create_check(test, CheckContext(nn.Identity(), LAYERS, settings))
    return check.judge(kw.get("trained", _trained()), stages, kw.get("retrain_floor"))


def test_cascading_passes_fails_or_is_inconclusive_by_where_the_interval_lies() -> None:
    low = [_stage(k, _table(0.2, seed=k)) for k in range(1, 5)]
    high = [_stage(k, _table(0.8, seed=k)) for k in range(1, 5)]
    spread_images = np.tile(0.47 + 0.3 * np.random.default_rng(3).standard_normal(IMAGES), (DRAWS, 1))
    near = [_stage(k, spread_images - spread_images.mean() + 0.47) for k in range(1, 5)]
    assert _judge(RandomizationTest.cascading, low).outcome is Outcome.passed
    failed = _judge(RandomizationTest.cascading, high)
    assert failed.outcome is Outcome.failed and failed.estimate.ci95_low >= 0.5
    unsure = _judge(RandomizationTest.cascading, near)
    assert unsure.outcome is Outcome.inconclusive and "contains 0.5" in unsure.reason


def test_similarity_that_survives_the_top_layers_fails_although_the_last_stage_is_low() -> None:
    """The paper's Guided Backprop: near 0.8 while the upper layers go, low only at the bottom."""
    curve = [0.85, 0.8, 0.75, 0.2]
    stages = [_stage(k, _table(mean, seed=k)) for k, mean in enumerate(curve, start=1)]
    verdict = _judge(RandomizationTest.cascading, stages)
    assert verdict.outcome is Outcome.failed
    assert verdict.estimate.mean == pytest.approx(np.mean(curve), abs=0.03)
    assert "4 randomized stages" in verdict.statistic


def test_independent_names_the_layers_whose_randomization_alone_leaves_maps_similar() -> None:
    stages = [_stage(1, _table(0.9)), _stage(2, _table(0.1)), _stage(3, _table(0.15)), _stage(4, _table(0.1))]
    verdict = _judge(RandomizationTest.independent, stages)
    assert verdict.outcome is Outcome.passed  # mean over layers about 0.31
    assert verdict.similar_layers == ["layer3"] and "layer3" in verdict.reason


def test_draws_on_both_sides_of_the_limit_are_inconclusive() -> None:
    table = np.stack([np.full(IMAGES, 0.3), np.full(IMAGES, 0.35), np.full(IMAGES, 0.7)])
    table += 0.01 * np.random.default_rng(0).standard_normal(table.shape)
    verdict = _judge(RandomizationTest.cascading, [_stage(1, table)])
    assert verdict.outcome is Outcome.inconclusive and "draws disagree" in verdict.reason


def test_one_stray_draw_among_many_is_no_disagreement_but_a_quarter_is() -> None:
    rows = [np.full(IMAGES, mean) for mean in (0.2, 0.22, 0.25, 0.21, 0.23, 0.2, 0.24, 0.7)]
    table = np.stack(rows) + 0.01 * np.random.default_rng(0).standard_normal((8, IMAGES))
    one_stray = _judge(RandomizationTest.cascading, [_stage(1, table)])
    assert one_stray.cause != "draws_disagree"
    table[6] += 0.5  # two of eight clearly above the limit
    two_strays = _judge(RandomizationTest.cascading, [_stage(1, table)])
    assert two_strays.outcome is Outcome.inconclusive and two_strays.cause == "draws_disagree"


def test_non_finite_maps_are_inconclusive_with_their_count_and_stage() -> None:
    stages = [_stage(1, _table(0.1)), _stage(2, _table(0.1), non_finite=3)]
    verdict = _judge(RandomizationTest.cascading, stages)
    assert verdict.outcome is Outcome.inconclusive
    assert "3 maps hold NaN or inf" in verdict.reason and "layer2 only" in verdict.reason
    trained_nan = _judge(RandomizationTest.cascading, [_stage(1, _table(0.1))], trained=_trained(2))
    assert trained_nan.outcome is Outcome.inconclusive and "trained model" in trained_nan.reason


def test_too_few_defined_images_are_inconclusive() -> None:
    table = np.full((DRAWS, IMAGES), np.nan)
    table[:, :4] = 0.1 + 0.01 * np.arange(4)  # four images with a defined similarity
    verdict = _judge(RandomizationTest.cascading, [_stage(1, table)])
    assert verdict.outcome is Outcome.inconclusive and "only 4 image(s)" in verdict.reason
    one = np.full((1, IMAGES), np.nan)
    one[0, 0] = 0.0
    single = _judge(RandomizationTest.cascading, [_stage(1, one)], VerdictRule(min_defined_images=2))
    assert single.outcome is Outcome.inconclusive


def test_an_undefined_stage_is_left_out_of_the_curve_not_counted_as_a_pass() -> None:
    constant = np.full((DRAWS, IMAGES), np.nan)  # every map of this stage constant
    verdict = _judge(RandomizationTest.cascading, [_stage(1, _table(0.8)), _stage(2, constant)])
    assert verdict.outcome is Outcome.failed
    assert verdict.estimate.mean == pytest.approx(0.8, abs=0.03)


FLOOR_PAIRS = [(0, 1), (0, 2), (1, 2)]  # the audited model and two controls, one row of _table each


def _floor(mean: float, non_finite: int = 0, spread: float = 0.05) -> RetrainFloor:
    values = {metric: _table(mean, spread, seed=9) for metric in Metric}
    return RetrainFloor(values, FLOOR_PAIRS, non_finite)


def test_data_test_needs_the_twins_below_the_retrain_floor_by_the_gap() -> None:
    twins = [_stage(1, _table(0.25), cross=0.05)]
    passed = _judge(RandomizationTest.data, twins, retrain_floor=_floor(0.75))
    assert passed.outcome is Outcome.passed and passed.limit == pytest.approx(0.5)
    close = _judge(RandomizationTest.data, twins, retrain_floor=_floor(0.4))  # limit 0.2
    assert close.outcome is Outcome.failed and close.limit == pytest.approx(0.2, abs=0.01)
    without_control = _judge(RandomizationTest.data, twins)
    assert without_control.limit == 0.5 and "no true-label control" in without_control.rule
    assert without_control.retrain_margin is None and passed.retrain_margin is not None


def test_a_twin_just_past_the_retrain_floors_mean_is_not_failed_while_the_floor_is_uncertain() -> None:
    """The floor comes from a few models: its mean less the gap is no sharper line than the twins are."""
    twins = [_stage(1, _table(0.32, spread=0.02, seed=4), cross=0.05)]
    uncertain_floor = RetrainFloor(
        {metric: _table(0.49, spread=0.02, seed=9) + np.array([[0.0], [0.08], [-0.08]]) for metric in Metric},
        FLOOR_PAIRS,
        0,
    )
    verdict = _judge(RandomizationTest.data, twins, retrain_floor=uncertain_floor)
    assert verdict.estimate.ci95_low >= verdict.limit  # the twins clear the floor's mean less the gap
    assert verdict.outcome is Outcome.inconclusive and verdict.cause == "interval"
    assert "contains the gap 0.2" in verdict.reason
    margin = verdict.retrain_margin
    assert margin is not None and margin.ci95_low < 0.2 < margin.ci95_high
    steady_floor = _floor(0.49, spread=0.02)
    assert _judge(RandomizationTest.data, twins, retrain_floor=steady_floor).outcome is Outcome.failed


def test_one_true_label_control_passes_no_method_and_says_why() -> None:
    """One pair of models cannot show how far the floor moves from model to model (0018)."""
    one_pair = RetrainFloor({metric: _table(0.75, seed=9)[:1] for metric in Metric}, [(0, 1)], 0)
    far_below = _judge(RandomizationTest.data, [_stage(1, _table(0.1), cross=0.05)], retrain_floor=one_pair)
    assert far_below.outcome is Outcome.inconclusive and far_below.cause == "floor_spread_unknown"
    assert "two or more controls" in far_below.reason
    margin = far_below.retrain_margin
    assert margin is not None and margin.models == 2 and margin.ci95_low is None
    assert margin.mean == pytest.approx(0.65, abs=0.02)
    too_similar = _judge(RandomizationTest.data, [_stage(1, _table(0.9), cross=0.05)], retrain_floor=one_pair)
    assert too_similar.outcome is Outcome.failed  # above the threshold whatever the floor
    three_models = _judge(
        RandomizationTest.data, [_stage(1, _table(0.1), cross=0.05)], retrain_floor=_floor(0.75)
    )
    assert three_models.outcome is Outcome.passed


def test_data_test_without_power_is_inconclusive_never_an_impossible_limit() -> None:
    twins = [_stage(1, _table(0.05), cross=0.1)]
    verdict = _judge(RandomizationTest.data, twins, retrain_floor=_floor(0.15))
    assert verdict.outcome is Outcome.inconclusive and "no power" in verdict.reason
    assert verdict.cause == "no_power"


def test_non_finite_control_maps_make_the_data_test_inconclusive() -> None:
    twins = [_stage(1, _table(0.25), cross=0.05)]
    verdict = _judge(RandomizationTest.data, twins, retrain_floor=_floor(0.75, non_finite=4))
    assert verdict.cause == "non_finite_maps" and "4 at true-label controls" in verdict.reason
    nan_twins = [_stage(1, _table(0.05), cross=0.1, non_finite=2)]  # and no power: the NaN is named
    assert _judge(RandomizationTest.data, nan_twins, retrain_floor=_floor(0.15)).cause == "non_finite_maps"


def test_the_interval_covers_the_spread_between_draws() -> None:
    images_only = summarize(np.tile(np.linspace(0.2, 0.4, IMAGES), (DRAWS, 1)))
    shifted = np.tile(np.linspace(0.2, 0.4, IMAGES), (DRAWS, 1)) + np.array([[-0.1], [0.0], [0.1]])
    with_draws = summarize(shifted)
    assert with_draws.mean == pytest.approx(images_only.mean)
    assert with_draws.std_between_draws == pytest.approx(0.1)
    width = with_draws.ci95_high - with_draws.ci95_low
    assert width > 2 * (images_only.ci95_high - images_only.ci95_low)
    assert with_draws.draw_means == pytest.approx([0.2, 0.3, 0.4])
