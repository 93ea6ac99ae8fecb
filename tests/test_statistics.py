"""Summaries against hand computations; NaN never reaches the report."""

import json
import math

import numpy as np
import pytest
from scipy.stats import t as student_t

from workers.engine.settings import Metric
from workers.engine.statistics import summarize, summarize_all

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
