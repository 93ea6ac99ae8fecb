"""Summaries of similarities over probe images and random draws: mean, spread and a 95% interval.

The values form a table of draws (re-initializations, or random-label twins) by images; a bare 1-D array
is one draw. The two sources of chance are crossed: every draw sees the same images. The variance of the
grand mean is estimated as ``s_d^2 / R + s_i^2 / N``: the variance of the R draw means over R plus the
variance of the N image means over N. Under the two-way random-effects model this overestimates the true
variance by the interaction term's ``sigma_e^2 / (R N)`` only, so the interval is slightly conservative.
Its degrees of freedom come from Welch-Satterthwaite; with one draw it is the Student t interval over
images. See docs/decisions/0008.

Undefined values (NaN: a constant map has no rank correlation) are counted and left out of every
statistic, so one degenerate map cannot turn a mean into NaN. Statistics that need more values than there
are (a spread of one value) are None, never NaN, because JSON cannot carry NaN.
"""

import math

import numpy as np
from scipy.stats import t as student_t

from workers.core.audit_settings import Metric
from workers.core.report import Summary

CONFIDENCE = 0.95


def summarize(values: np.ndarray) -> Summary:
    """Summary of a [draws, images] table (or an [images] array) of similarities; NaN cells are skipped."""
    table = np.asarray(values, dtype=np.float64)
    table = table.reshape(1, -1) if table.ndim == 1 else table.reshape(table.shape[0], -1)
    defined = np.isfinite(table)
    images_defined = defined.any(axis=0)
    n = int(images_defined.sum())
    by_draw = defined_mean(table, axis=1)
    draw_means = [None if np.isnan(m) else float(m) for m in by_draw]
    mean = _mean(table[defined])
    std_images = std_draws = low = high = None
    if n >= 2:
        image_means = defined_mean(table, axis=0)[images_defined]
        std_images = float(image_means.std(ddof=1))
        present = [m for m in draw_means if m is not None]
        image_term = std_images**2 / n
        draw_term = 0.0
        if len(present) >= 2:
            std_draws = float(np.std(present, ddof=1))
            draw_term = std_draws**2 / len(present)
        variance = image_term + draw_term
        degrees = _satterthwaite([(image_term, n - 1), (draw_term, len(present) - 1)])
        half_width = float(student_t.ppf(0.5 + CONFIDENCE / 2, df=degrees)) * math.sqrt(variance)
        low, high = mean - half_width, mean + half_width
    return Summary(
        mean=mean,
        std=std_images,
        std_between_draws=std_draws,
        draw_means=draw_means,
        ci95_low=low,
        ci95_high=high,
        n=n,
        n_undefined=len(images_defined) - n,
        undefined_values=int((~defined).sum()),
    )


def defined_mean(values: np.ndarray, axis: int) -> np.ndarray:
    """Mean along ``axis`` of the finite values only; NaN where a slice has none (and no warning)."""
    defined = np.isfinite(values)
    counts = defined.sum(axis=axis)
    totals = np.where(defined, values, 0.0).sum(axis=axis)
    return np.divide(totals, counts, out=np.full(counts.shape, np.nan), where=counts > 0)


def draw_intervals(values: np.ndarray) -> list[tuple[float | None, float | None]]:
    """Each draw's own 95% interval over images, from a [draws, images] table."""
    return [(row.ci95_low, row.ci95_high) for row in map(summarize, np.atleast_2d(values))]


def retrain_margin(
    floor: np.ndarray, pairs: list[tuple[int, int]], twins: np.ndarray
) -> tuple[float | None, float | None, float | None]:
    """Mean and 95% interval of the retrain floor minus the twins' similarity (docs/decisions/0017).

    ``floor`` is a [pairs, images] table of similarities between honestly trained models, ``pairs[k]``
    the two models of row ``k``; ``twins`` a [twins, images] table on the same images. The variance sums
    three terms: the per-image differences over images (paired: both tables score the same images, so
    what every model finds easy or hard cancels), the twins' draw means over twins, and a jackknife over
    trained models for the floor. Pairs that share a model are not independent; leaving out one model at
    a time measures how much the floor moves with the models it happened to get. Where that cannot be
    measured (two models: one pair), there is no interval (docs/decisions/0018).
    """
    floor, twins = np.atleast_2d(floor), np.atleast_2d(twins)
    floor_mean, twin_mean = _mean(floor[np.isfinite(floor)]), _mean(twins[np.isfinite(twins)])
    if floor_mean is None or twin_mean is None:
        return None, None, None
    estimate = floor_mean - twin_mean
    differences = defined_mean(floor, axis=0) - defined_mean(twins, axis=0)
    differences = differences[np.isfinite(differences)]
    if len(differences) < 2:
        return estimate, None, None
    terms = [(float(differences.var(ddof=1)) / len(differences), len(differences) - 1)]
    twin_means = defined_mean(twins, axis=1)
    twin_means = twin_means[np.isfinite(twin_means)]
    if len(twin_means) >= 2:
        terms.append((float(twin_means.var(ddof=1)) / len(twin_means), len(twin_means) - 1))
    floor_term = _jackknife_over_models(floor, pairs)
    if floor_term is None:
        return estimate, None, None
    terms.append(floor_term)
    variance = sum(value for value, _ in terms)
    half_width = float(student_t.ppf(0.5 + CONFIDENCE / 2, df=_satterthwaite(terms))) * math.sqrt(variance)
    return estimate, estimate - half_width, estimate + half_width


def _jackknife_over_models(floor: np.ndarray, pairs: list[tuple[int, int]]) -> tuple[float, int] | None:
    """The floor mean's variance from leaving out one model at a time; None unless every such floor is
    defined (with two models, leaving one out leaves no pair)."""
    models = sorted({model for pair in pairs for model in pair})
    pair_means = defined_mean(floor, axis=1)
    left_out = []
    for model in models:
        kept = [k for k, pair in enumerate(pairs) if model not in pair and np.isfinite(pair_means[k])]
        if not kept:
            return None
        left_out.append(float(pair_means[kept].mean()))
    count = len(models)
    values = np.array(left_out)
    return (count - 1) / count * float(((values - values.mean()) ** 2).sum()), count - 1


def summarize_all(values: dict[Metric, np.ndarray]) -> dict[Metric, Summary]:
    """summarize() for each metric of a comparison."""
    return {metric: summarize(metric_values) for metric, metric_values in values.items()}


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if len(values) else None


def _satterthwaite(terms: list[tuple[float, int]]) -> float:
    """Degrees of freedom of a sum of variance estimates, each with its own degrees of freedom; the first
    term's when none is positive."""
    positive = [(value, df) for value, df in terms if value > 0 and df > 0]
    if not positive:
        return float(max(terms[0][1], 1))
    return sum(value for value, _ in positive) ** 2 / sum(value**2 / df for value, df in positive)
