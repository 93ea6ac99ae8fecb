"""The metrics as NumPy, SciPy and scikit-image compute them, one image at a time: the test oracle that
``workers.engine.similarity`` (batched, in torch) must agree with.
The definitions (normalization, windows, cells, undefined values) are documented there.
"""

import math
from dataclasses import dataclass, fields

import numpy as np
from scipy.stats import rankdata
from skimage.feature import hog
from skimage.metrics import structural_similarity

from workers.core.audit_settings import Metric
from workers.engine.similarity import MIN_SIDE, hog_geometry, ssim_win_size

CLIP_PERCENTILE = 99.0
HOG_ORIENTATIONS = 9


def normalize_absolute(maps: np.ndarray) -> np.ndarray:
    """[N, C, H, W] -> [N, H, W] in [0, 1]: sum |.| over channels, clip at the 99th percentile, scale."""
    summed = np.abs(_as_nchw(maps)).sum(axis=1)
    clip = _clip_values(summed)
    return _scale(np.minimum(summed, clip[:, None, None]), clip)


def normalize_signed(maps: np.ndarray) -> np.ndarray:
    """[N, C, H, W] -> [N, H, W] in [-1, 1]: sum over channels, clip |.| at its 99th percentile, scale."""
    summed = _as_nchw(maps).sum(axis=1)
    clip = _clip_values(np.abs(summed))
    return _scale(np.clip(summed, -clip[:, None, None], clip[:, None, None]), clip)


def is_degenerate(maps: np.ndarray) -> np.ndarray:
    """Which images ([N, ...]) have a constant map or a non-finite value: no metric is defined for them.

    Constant means max - min within a few units of the dtype's resolution of the map's magnitude, so a
    float32 map that differs only by rounding counts as constant.
    """
    flat = _flat(np.asarray(maps))
    finite = np.isfinite(flat).all(axis=1)
    constant = np.ones(len(flat), dtype=bool)
    constant[finite] = _constant_rows(flat[finite])
    return constant


@dataclass(frozen=True)
class PreparedMaps:
    """What every comparison needs of one batch of maps, computed once: an audit compares each stage's
    maps with the trained maps of the same images and of other images, and the trained maps with many."""

    invalid: np.ndarray  # (N,) degenerate maps (constant or non-finite): every metric is NaN for them
    non_finite: np.ndarray  # (N,) maps holding NaN or inf, which no verdict may rest on
    abs_ranks: np.ndarray  # (N, P) ranks of the normalized absolute map
    abs_constant: np.ndarray
    signed_ranks: np.ndarray  # (N, P) ranks of the normalized signed map
    signed_constant: np.ndarray
    unit: np.ndarray  # (N, H, W) absolute map min-max scaled to [0, 1], for SSIM
    unit_constant: np.ndarray
    hog: np.ndarray  # (N, F) HOG features of ``unit``

    def __len__(self) -> int:
        return len(self.invalid)

    @property
    def constant(self) -> np.ndarray:
        """(N,) maps that are constant (degenerate, but finite): the all-zero GradCAM."""
        return self.invalid & ~self.non_finite

    def __getitem__(self, images: np.ndarray) -> "PreparedMaps":
        """The same quantities for a reordering or subset of the images."""
        return PreparedMaps(**{f.name: getattr(self, f.name)[images] for f in fields(self)})


def prepare(maps: np.ndarray) -> PreparedMaps:
    """Normalize, rank and HOG a batch of raw maps [N, C, H, W] once, for any number of comparisons."""
    maps = _checked(np.asarray(maps))
    invalid = is_degenerate(maps)
    non_finite = ~np.isfinite(_flat(maps)).all(axis=1)
    maps = _zeroed(maps, invalid)
    absolute_maps = normalize_absolute(maps)
    absolute, signed = _flat(absolute_maps), _flat(normalize_signed(maps))
    unit = _min_max(absolute_maps)
    return PreparedMaps(
        invalid=invalid,
        non_finite=non_finite,
        abs_ranks=rankdata(absolute, axis=1, method="average"),
        abs_constant=_constant_rows(absolute),
        signed_ranks=rankdata(signed, axis=1, method="average"),
        signed_constant=_constant_rows(signed),
        unit=unit,
        unit_constant=_constant_rows(_flat(unit)),
        hog=_hog_features(unit) if len(unit) else np.empty((0, 0)),
    )


def compare_prepared(reference: PreparedMaps, other: PreparedMaps) -> dict[Metric, np.ndarray]:
    """Per-image similarity of two prepared batches of the same shape; see ``compare``."""
    if reference.unit.shape != other.unit.shape:
        raise ValueError(f"maps differ in shape: {reference.unit.shape} vs {other.unit.shape}")
    invalid = reference.invalid | other.invalid
    results = {
        Metric.spearman_abs: _pearson_rows(reference.abs_ranks, other.abs_ranks),
        Metric.spearman_signed: _pearson_rows(reference.signed_ranks, other.signed_ranks),
        Metric.ssim: _ssim(reference.unit, other.unit, ~(reference.unit_constant | other.unit_constant)),
        Metric.hog: _pearson_rows(reference.hog, other.hog) if len(invalid) else np.empty(0),
    }
    results[Metric.spearman_abs][reference.abs_constant | other.abs_constant] = np.nan
    results[Metric.spearman_signed][reference.signed_constant | other.signed_constant] = np.nan
    for values in results.values():
        values[invalid] = np.nan
    return results


def compare(reference: np.ndarray, other: np.ndarray) -> dict[Metric, np.ndarray]:
    """Per-image similarity of two batches of raw maps [N, C, H, W] of the same shape.

    Returns float64 (N,) per metric, NaN where the metric is undefined (see the module docstring).
    """
    reference, other = np.asarray(reference), np.asarray(other)
    if reference.shape != other.shape:
        raise ValueError(f"maps differ in shape: {reference.shape} vs {other.shape}")
    return compare_prepared(prepare(reference), prepare(other))


def _as_nchw(maps: np.ndarray) -> np.ndarray:
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 4:
        raise ValueError(f"maps must be [N, C, H, W], got shape {maps.shape}")
    return maps


def _checked(maps: np.ndarray) -> np.ndarray:
    """The batch as given (dtype kept, for is_degenerate's tolerance), or a ValueError."""
    if maps.ndim != 4:
        raise ValueError(f"maps must be [N, C, H, W], got shape {maps.shape}")
    if min(maps.shape[2:]) < MIN_SIDE:
        raise ValueError(f"maps need at least {MIN_SIDE}x{MIN_SIDE} pixels, got {maps.shape[2:]}")
    return maps


def _flat(maps: np.ndarray) -> np.ndarray:
    """[N, ...] -> [N, P], also for N = 0."""
    return maps.reshape(maps.shape[0], math.prod(maps.shape[1:]))


def _clip_values(magnitudes: np.ndarray) -> np.ndarray:
    """Each image's 99th percentile of a non-negative [N, H, W] map, or its maximum where that is 0."""
    flat = _flat(magnitudes)
    clip = np.percentile(flat, CLIP_PERCENTILE, axis=1)
    return np.where(clip > 0, clip, flat.max(axis=1, initial=0.0))


def _scale(maps: np.ndarray, clip: np.ndarray) -> np.ndarray:
    """Divide each image by its clip value; an all-zero map (clip 0) stays zero."""
    return np.divide(maps, clip[:, None, None], out=np.zeros_like(maps), where=clip[:, None, None] > 0)


def _min_max(maps: np.ndarray) -> np.ndarray:
    """Scale each image to [0, 1]; a constant image becomes zeros (and is undefined for every metric)."""
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    return np.divide(maps - low, span, out=np.zeros_like(maps), where=span > 0)


def _constant_rows(rows: np.ndarray) -> np.ndarray:
    """max - min of each row within a few units of the dtype's resolution of its magnitude."""
    if len(rows) == 0 or rows.shape[1] == 0:
        return np.ones(len(rows), dtype=bool)
    dtype = rows.dtype if np.issubdtype(rows.dtype, np.floating) else np.float64
    tolerance = 8 * np.finfo(dtype).eps * np.abs(rows).max(axis=1)
    return np.ptp(rows, axis=1) <= tolerance


def _zeroed(maps: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """A float64 copy with the given images zeroed, so NaN and inf never reach the arithmetic."""
    maps = np.array(maps, dtype=np.float64)
    maps[rows] = 0.0
    return maps


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of a with the same row of b; NaN where either row is constant."""
    undefined = _constant_rows(a) | _constant_rows(b)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denominator = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    result = np.full(len(a), np.nan)
    result[~undefined] = (a * b).sum(axis=1)[~undefined] / denominator[~undefined]
    return np.clip(result, -1.0, 1.0)


def _ssim(a: np.ndarray, b: np.ndarray, defined: np.ndarray) -> np.ndarray:
    """SSIM of [0, 1] maps [N, H, W] image by image, with data_range stated; NaN where not ``defined``."""
    win_size = ssim_win_size(*a.shape[1:])
    result = np.full(len(a), np.nan)
    for i in np.flatnonzero(defined):
        result[i] = structural_similarity(
            a[i], b[i], data_range=1.0, win_size=win_size, gaussian_weights=False
        )
    return result


def _hog_features(maps: np.ndarray) -> np.ndarray:
    """[N, H, W] -> [N, F] HOG feature vectors (9 orientations, L2-Hys blocks)."""
    cell, block = hog_geometry(*maps.shape[1:])
    return np.stack(
        [
            hog(
                image,
                orientations=HOG_ORIENTATIONS,
                pixels_per_cell=(cell, cell),
                cells_per_block=(block, block),
                block_norm="L2-Hys",
                feature_vector=True,
            )
            for image in maps
        ]
    )
