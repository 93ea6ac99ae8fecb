"""Summaries of per-image similarities: mean, spread and a 95% confidence interval, never a bare mean.

Undefined values (NaN: a constant map has no rank correlation) are counted in ``n_undefined`` and left
out of every statistic, so one degenerate map cannot turn a mean into NaN. The interval is the Student t
interval of the mean over the defined images. Statistics that need more images than there are (a
spread of one value) are None, never NaN, because JSON cannot carry NaN.
"""

import math

import numpy as np
from scipy.stats import t as student_t

from workers.engine.report import Summary
from workers.engine.settings import Metric

CONFIDENCE = 0.95


def summarize(values: np.ndarray) -> Summary:
    """Mean, sample std (ddof=1) and 95% t-interval of the finite values; non-finite ones are counted."""
    values = np.asarray(values, dtype=np.float64).ravel()
    finite = values[np.isfinite(values)]
    n = len(finite)
    mean = float(finite.mean()) if n else None
    std = low = high = None
    if n >= 2:
        std = float(finite.std(ddof=1))
        half_width = float(student_t.ppf(0.5 + CONFIDENCE / 2, df=n - 1)) * std / math.sqrt(n)
        low, high = mean - half_width, mean + half_width
    return Summary(mean=mean, std=std, ci95_low=low, ci95_high=high, n=n, n_undefined=len(values) - n)


def summarize_all(values: dict[Metric, np.ndarray]) -> dict[Metric, Summary]:
    """summarize() for each metric of a compare() result."""
    return {metric: summarize(metric_values) for metric, metric_values in values.items()}
