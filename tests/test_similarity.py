"""Known answers for the similarity metrics: identity, independence, sign, monotone transforms, degeneracy;
and agreement of the batched torch metrics with SciPy and scikit-image one image at a time."""

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from tests import similarity_oracle
from workers.core.audit_settings import Metric
from workers.engine.similarity import (
    average_ranks,
    compare,
    hog_geometry,
    is_degenerate,
    normalize_absolute,
    normalize_signed,
    ssim_win_size,
)
from workers.engine.statistics import summarize

pytestmark = pytest.mark.filterwarnings("error")  # the module promises no warning spam


def _maps(seed: int, n: int, channels: int, size: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, channels, size, size))


@pytest.mark.parametrize(("n", "channels", "size"), [(20, 1, 28), (5, 3, 64), (4, 1, 5), (3, 2, 3)])
def test_identical_maps_score_one_on_every_metric(n: int, channels: int, size: int) -> None:
    maps = _maps(0, n, channels, size)
    result = compare(maps, maps.copy())
    assert set(result) == set(Metric)
    for values in result.values():
        assert values.shape == (n,)
        assert values.dtype == np.float64
        np.testing.assert_allclose(values, 1.0, atol=1e-12)


@pytest.mark.parametrize(("n", "size"), [(200, 28), (50, 64)])
def test_independent_random_maps_score_near_zero(n: int, size: int) -> None:
    # Spearman of independent maps of P pixels has a per-image std of about 1/sqrt(P) (0.036 at 28x28,
    # 0.016 at 64x64); its mean over n images about 1/sqrt(nP) (0.0025 and 0.0022). 0.02 is 8 or more
    # standard errors from 0, and no single image may stray beyond 6/sqrt(P).
    result = compare(_maps(1, n, 1, size), _maps(2, n, 1, size))
    pixels = size * size
    for metric in (Metric.spearman_abs, Metric.spearman_signed):
        assert abs(result[metric].mean()) < 0.02
        assert np.abs(result[metric]).max() < 6 / np.sqrt(pixels)
    # SSIM's stabilizing constant leaves a small positive floor (about 0.007 here).
    assert abs(result[Metric.ssim].mean()) < 0.02
    # HOG of noise shares orientation-bin anisotropy of the pixel grid (about 0.07 here; module docstring).
    assert abs(result[Metric.hog].mean()) < 0.2


def test_negated_map_flips_signed_rank_but_not_absolute() -> None:
    maps = _maps(3, 10, 3, 28)
    result = compare(maps, -maps)
    np.testing.assert_allclose(result[Metric.spearman_signed], -1.0, atol=1e-12)
    for metric in (Metric.spearman_abs, Metric.ssim, Metric.hog):
        np.testing.assert_allclose(result[metric], 1.0, atol=1e-12)


def test_monotone_transform_keeps_rank_correlation() -> None:
    positive = np.abs(_maps(4, 10, 1, 28)) + 0.1
    result = compare(positive, positive**3)
    for metric in (Metric.spearman_abs, Metric.spearman_signed):
        np.testing.assert_allclose(result[metric], 1.0, atol=1e-12)


def test_degenerate_maps_are_nan_and_counted_not_averaged() -> None:
    reference = _maps(5, 6, 1, 28)
    other = _maps(6, 6, 1, 28)
    other[1] = 0.0  # all-zero GradCAM of a randomized model
    other[2] = 0.37  # constant, non-zero
    other[3, 0, 4, 4] = np.nan
    reference[4, 0, 0, 0] = np.inf
    result = compare(reference, other)
    for metric, values in result.items():
        assert np.isnan(values[1:5]).all(), metric
        assert np.isfinite(values[[0, 5]]).all(), metric
        summary = summarize(values)
        assert (summary.n, summary.n_undefined) == (2, 4)
        assert summary.mean is not None and np.isfinite(summary.mean)


def test_constant_magnitude_leaves_only_the_signed_metric_defined() -> None:
    signs = np.sign(_maps(7, 2, 1, 8))
    result = compare(signs, signs)
    assert np.isnan(result[Metric.spearman_abs]).all()
    assert np.isnan(result[Metric.ssim]).all()
    assert np.isnan(result[Metric.hog]).all()
    np.testing.assert_allclose(result[Metric.spearman_signed], 1.0)


def test_is_degenerate() -> None:
    maps = _maps(8, 6, 2, 10).astype(np.float32)
    maps[0] = 0.0
    maps[1] = -3.5
    maps[2] = np.float32(1.0) + np.float32(1e-7) * (np.arange(200, dtype=np.float32).reshape(2, 10, 10) % 2)
    maps[3, 1, 2, 3] = np.inf
    maps[4, 0, 0, 0] = np.nan
    assert is_degenerate(maps).tolist() == [True, True, True, True, True, False]


def test_normalize_absolute_clips_at_99th_percentile_and_scales_to_unit() -> None:
    ramp = np.arange(100, dtype=np.float64).reshape(1, 1, 10, 10)
    maps = np.concatenate([ramp, -ramp], axis=1)  # |.| summed over channels: 2 * ramp
    clip = 2 * np.percentile(np.arange(100), 99)  # 2 * 98.01
    expected = np.minimum(2 * ramp[0, 0], clip) / clip
    np.testing.assert_allclose(normalize_absolute(maps)[0], expected)
    assert normalize_absolute(maps).max() == 1.0
    assert normalize_absolute(maps).shape == (1, 10, 10)


def test_normalize_absolute_keeps_zero_maps_zero_and_sparse_maps_visible() -> None:
    maps = np.zeros((2, 1, 10, 10))
    maps[1, 0, 3, 3] = -5.0  # one pixel of 100: the 99th percentile is 0, so clip at the maximum
    normalized = normalize_absolute(maps)
    assert not normalized[0].any()
    assert normalized[1, 3, 3] == 1.0
    assert normalized[1].sum() == 1.0


def test_normalize_signed_keeps_sign_and_clips_magnitude() -> None:
    values = np.arange(-50, 50, dtype=np.float64).reshape(1, 1, 10, 10)
    clip = np.percentile(np.abs(values), 99)
    expected = np.clip(values[0, 0], -clip, clip) / clip
    normalized = normalize_signed(values).numpy()
    np.testing.assert_allclose(normalized[0], expected)
    assert normalized.min() == -1.0  # -50 lies beyond the clip; +49 just inside it
    assert normalized.max() < 1.0
    np.testing.assert_array_equal(np.sign(normalized), np.sign(values[:, 0]))


def test_ssim_uses_data_range_one_on_min_max_maps() -> None:
    reference, other = _maps(9, 4, 1, 28), _maps(10, 4, 1, 28)
    ssim = compare(reference, other)[Metric.ssim]
    np.testing.assert_allclose(compare(3.0 * reference, 3.0 * other)[Metric.ssim], ssim, rtol=1e-12)
    np.testing.assert_allclose(compare(1e-6 * reference, 5e3 * other)[Metric.ssim], ssim, rtol=1e-12)

    def unit(maps: np.ndarray) -> np.ndarray:
        absolute = normalize_absolute(maps)[0].numpy()
        return (absolute - absolute.min()) / (absolute.max() - absolute.min())

    a, b = unit(reference[:1]), unit(other[:1])
    expected = structural_similarity(a, b, data_range=1.0, win_size=7, gaussian_weights=False)
    assert ssim[0] == pytest.approx(expected, abs=1e-12)
    # The original's inherited data_range=2.0 inflates the same comparison.
    assert structural_similarity(a, b, data_range=2.0, win_size=7) > expected


@pytest.mark.parametrize(
    ("shape", "cell", "block"),
    [
        ((28, 28), 4, 2),
        ((64, 64), 9, 2),
        ((112, 150), 16, 2),
        ((224, 224), 16, 2),
        ((5, 9), 2, 2),
        ((3, 3), 2, 1),
    ],
)
def test_hog_geometry(shape: tuple[int, int], cell: int, block: int) -> None:
    assert hog_geometry(*shape) == (cell, block)


def test_ssim_window_fits_small_maps() -> None:
    assert [ssim_win_size(s, s) for s in (3, 4, 5, 6, 7, 28)] == [3, 3, 5, 5, 7, 7]


@pytest.mark.parametrize(
    ("reference", "other"),
    [((2, 1, 28, 28), (2, 3, 28, 28)), ((2, 1, 28, 28), (3, 1, 28, 28)), ((2, 28, 28), (2, 28, 28))],
)
def test_bad_shapes_raise(reference: tuple[int, ...], other: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        compare(np.ones(reference), np.ones(other))


def test_empty_batch_gives_empty_values() -> None:
    result = compare(np.zeros((0, 1, 28, 28)), np.zeros((0, 1, 28, 28)))
    assert all(values.shape == (0,) for values in result.values())


def test_too_small_maps_raise() -> None:
    with pytest.raises(ValueError, match="3x3"):
        compare(np.ones((1, 1, 2, 8)), np.ones((1, 1, 2, 8)))


def _saliency_like(seed: int, n: int, channels: int, height: int, width: int) -> np.ndarray:
    """Maps with what real ones have: smooth blobs, exact zeros (MNIST background), ties, sparse pixels."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:height, 0:width]
    maps = rng.normal(scale=0.3, size=(n, channels, height, width))
    for image in range(n):
        centre = rng.uniform(0, [height, width])
        maps[image] += np.exp(
            -((rows - centre[0]) ** 2 + (columns - centre[1]) ** 2) / (0.1 * height * width)
        )
    maps[:, :, : height // 4] = 0.0  # a zero band: ties in the ranks, flat regions in SSIM and HOG
    maps[1::4] = np.round(maps[1::4], 1)  # coarse values: many ties everywhere
    maps[2::4] *= rng.random(maps[2::4].shape) < 0.005  # sparse: the 99th percentile is 0
    return maps.astype(np.float32)


@pytest.mark.parametrize(
    ("n", "channels", "height", "width"),
    [(24, 1, 28, 28), (8, 3, 64, 48), (6, 1, 5, 9), (4, 3, 224, 224), (5, 2, 3, 3)],
)
def test_torch_metrics_agree_with_scipy_and_scikit_image(
    n: int, channels: int, height: int, width: int
) -> None:
    reference = _saliency_like(11, n, channels, height, width)
    other = _saliency_like(12, n, channels, height, width)
    other[0] = reference[0] * 2 + 0.01  # a near copy, so the high end of every metric is checked too
    other[3 % n] = 0.0  # degenerate
    expected = similarity_oracle.compare(reference, other)
    result = compare(reference, other)
    for metric in Metric:
        np.testing.assert_array_equal(np.isnan(result[metric]), np.isnan(expected[metric]), err_msg=metric)
        np.testing.assert_allclose(result[metric], expected[metric], atol=1e-4, rtol=0, err_msg=metric)


def test_torch_metrics_agree_with_scipy_and_scikit_image_on_non_negative_maps() -> None:
    reference = np.abs(_saliency_like(15, 12, 3, 32, 32))  # GradCAM, VarGrad: signed and absolute agree
    other = np.abs(_saliency_like(16, 12, 3, 32, 32))
    expected = similarity_oracle.compare(reference, other)
    result = compare(reference, other)
    for metric in Metric:
        np.testing.assert_allclose(result[metric], expected[metric], atol=1e-4, rtol=0, err_msg=metric)


def test_torch_normalization_agrees_with_numpy() -> None:
    maps = _saliency_like(13, 12, 3, 32, 32)
    np.testing.assert_allclose(
        normalize_absolute(maps), similarity_oracle.normalize_absolute(maps), atol=1e-12
    )
    np.testing.assert_allclose(normalize_signed(maps), similarity_oracle.normalize_signed(maps), atol=1e-12)
    np.testing.assert_array_equal(is_degenerate(maps), similarity_oracle.is_degenerate(maps))


def test_average_ranks_match_scipy_with_ties() -> None:
    from scipy.stats import rankdata

    rows = np.random.default_rng(14).integers(0, 5, size=(7, 40)).astype(np.float64)
    rows[0] = 3.0  # one tie group spanning the row
    ordered, order = torch.from_numpy(rows).sort(dim=1)
    np.testing.assert_array_equal(
        average_ranks(ordered, order).numpy(), rankdata(rows, axis=1, method="average")
    )
