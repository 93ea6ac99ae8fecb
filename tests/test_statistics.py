"""Summaries against hand computations; NaN never reaches the report."""

import json
import math

import numpy as np
import pytest
from scipy.stats import t as student_t

from workers.core.audit_settings import Metric
from workers.engine.statistics import retrain_margin, summarize, summarize_all

T_975_DF4 = 2.7764451051977934  # Student t quantile 0.975 with 4 degrees of freedom (tables: 2.776)


def test_known_mean_std_and_interval() -> None:
    summary = summarize(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    std = math.sqrt(10 / 4)  # squared deviations 4 + 1 + 0 + 1 + 4 over n - 1
    half_width = T_975_DF4 * std / math.sqrt(5)
    assert summary.mean == pytest.approx(3.0)
    assert summary.std == pytest.approx(std)
    assert summary.ci95_low == pytest.approx(3.0 - half_width)
    assert summary.ci95_high == pytest.approx(3.0 + half_width)
    assert (summary.n, summary.n_undefined) == (5, 0)


def test_nan_is_excluded_and_counted() -> None:
    with_nan = summarize(np.array([np.nan, 1.0, 2.0, np.nan, 3.0, 4.0, 5.0]))
    update = {"n_undefined": 0, "undefined_values": 0}
    assert with_nan.model_copy(update=update) == summarize(np.arange(1.0, 6.0))
    assert (with_nan.n_undefined, with_nan.undefined_values) == (2, 2)


def test_draws_and_images_both_widen_the_interval() -> None:
    """[draws, images]: variance of the mean = s_draws^2 / R + s_images^2 / N, Satterthwaite df."""
    table = np.array([[0.1, 0.3, 0.2, 0.4], [0.3, 0.5, 0.3, 0.6], [0.2, 0.3, 0.2, 0.5]])
    summary = summarize(table)
    draw_means, image_means = table.mean(axis=1), table.mean(axis=0)
    a, b = draw_means.var(ddof=1) / 3, image_means.var(ddof=1) / 4
    df = (a + b) ** 2 / (a**2 / 2 + b**2 / 3)
    half_width = student_t.ppf(0.975, df) * math.sqrt(a + b)
    assert summary.mean == pytest.approx(table.mean())
    assert summary.draw_means == pytest.approx(list(draw_means))
    assert summary.std_between_draws == pytest.approx(draw_means.std(ddof=1))
    assert summary.std == pytest.approx(image_means.std(ddof=1))
    assert summary.ci95_high - summary.mean == pytest.approx(half_width)
    assert summary.n == 4 and summary.std_between_draws is not None


@pytest.mark.parametrize("values", [np.array([]), np.array([np.nan, np.nan])])
def test_no_defined_value_gives_nulls(values: np.ndarray) -> None:
    summary = summarize(values)
    assert (summary.mean, summary.std, summary.ci95_low, summary.ci95_high) == (None, None, None, None)
    assert (summary.n, summary.n_undefined) == (0, len(values))


def test_one_value_has_a_mean_but_no_spread() -> None:
    summary = summarize(np.array([np.nan, 0.25]))
    assert summary.mean == 0.25
    assert (summary.std, summary.ci95_low, summary.ci95_high) == (None, None, None)
    assert (summary.n, summary.n_undefined) == (1, 1)


def test_output_is_plain_json_floats() -> None:
    summary = summarize(np.array([0.1, 0.2, np.nan], dtype=np.float32))
    for field in ("mean", "std", "ci95_low", "ci95_high"):
        assert type(getattr(summary, field)) is float
    assert "NaN" not in json.dumps(summary.model_dump())


def test_summarize_all_keeps_metrics() -> None:
    values = {Metric.spearman_abs: np.array([0.5, 0.7]), Metric.hog: np.array([np.nan])}
    summaries = summarize_all(values)
    assert set(summaries) == set(values)
    assert summaries[Metric.spearman_abs].mean == pytest.approx(0.6)
    assert summaries[Metric.hog].n_undefined == 1


FLOOR_PAIRS = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]  # the audited model and three controls


def test_retrain_margin_against_a_hand_computation() -> None:
    images = np.linspace(0.0, 0.4, 10)
    twins = np.stack([images + 0.2, images + 0.3])  # two twins
    floor = np.stack([images + 0.5 + shift for shift in (0.0, 0.02, 0.04, 0.06, 0.08, 0.1)])
    mean, low, high = retrain_margin(floor, FLOOR_PAIRS, twins)
    assert mean == pytest.approx(0.05 + 0.5 - 0.25)  # floor mean 0.75, twins 0.45
    # image effects are shared, so the paired differences are constant and only the draws speak
    twin_term = np.var([0.2, 0.3], ddof=1) / 2
    pair_means = np.array([0.0, 0.02, 0.04, 0.06, 0.08, 0.1])
    left_out = [pair_means[[k for k, p in enumerate(FLOOR_PAIRS) if m not in p]].mean() for m in range(4)]
    floor_term = 3 / 4 * np.sum((np.array(left_out) - np.mean(left_out)) ** 2)
    degrees = (twin_term + floor_term) ** 2 / (twin_term**2 / 1 + floor_term**2 / 3)
    half_width = student_t.ppf(0.975, degrees) * math.sqrt(twin_term + floor_term)
    assert (low, high) == pytest.approx((mean - half_width, mean + half_width))


def test_a_floor_that_moves_with_one_model_widens_the_margin() -> None:
    """Pairs that share a model are not independent draws: one odd control shifts three of six pairs."""
    rng = np.random.default_rng(0)
    twins = 0.3 + 0.05 * rng.standard_normal((3, 40))
    steady = 0.6 + 0.05 * rng.standard_normal((6, 40))
    odd_control = steady + np.array([[0.0], [0.0], [-0.2], [0.0], [-0.2], [-0.2]])  # every pair with model 3
    _, steady_low, steady_high = retrain_margin(steady, FLOOR_PAIRS, twins)
    _, odd_low, odd_high = retrain_margin(odd_control, FLOOR_PAIRS, twins)
    assert odd_high - odd_low > 2 * (steady_high - steady_low)


def test_retrain_margin_without_an_interval_says_none() -> None:
    assert retrain_margin(np.full((1, 5), np.nan), [(0, 1)], np.full((2, 5), 0.2)) == (None, None, None)
    mean, low, high = retrain_margin(np.array([[0.5]]), [(0, 1)], np.array([[0.2]]))
    assert mean == pytest.approx(0.3) and low is None and high is None


def test_a_floor_of_one_pair_gives_no_interval_since_it_cannot_show_its_spread_between_models() -> None:
    images = np.linspace(0.4, 0.8, 20)
    twins = np.stack([images - 0.3, images - 0.35, images - 0.25])
    mean, low, high = retrain_margin(images[None], [(0, 1)], twins)
    assert mean == pytest.approx(0.3) and low is None and high is None
