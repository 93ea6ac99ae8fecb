"""How similar two batches of saliency maps are, image by image: batched in torch on the maps' device.

The four metrics are the paper's (Adebayo et al., NeurIPS 2018, and its notebooks), with the fixes below.
Every step works on the whole batch at once, in float64; ``tests/similarity_oracle.py`` computes the same
numbers with SciPy and scikit-image one image at a time, and the tests hold the two within 1e-4.

- **Normalization.** Like the paper, absolute maps sum |.| over channels, are clipped at each image's
  99th percentile (so a few extreme pixels do not flatten the rest) and scaled to [0, 1]; signed
  ("diverging") maps sum over channels keeping the sign, clip |.| the same way and scale to [-1, 1].
  Where fewer than 1% of the pixels are non-zero the 99th percentile is 0 and the paper's code divides
  by zero; we clip at the map's maximum instead, so a sparse map stays a map.
- **Spearman** is the Pearson correlation of ranks, ties given their average rank (SciPy's default).
- **SSIM** runs on the absolute maps min-max normalized to [0, 1] with ``data_range=1.0`` stated
  explicitly, a 7x7 uniform window, sample covariance and K1 = 0.01, K2 = 0.03, averaged over the windows
  that lie inside the map (scikit-image's ``structural_similarity`` with ``gaussian_weights=False``). The
  original code inherited ``data_range=2.0`` from an old scikit-image default for float images; a doubled
  range quadruples the stabilizing constants, which pulls SSIM toward 1.
- **HOG** as scikit-image's ``hog``: central differences, 9 unsigned orientation bins of 20 degrees,
  cell histograms of magnitude divided by the cell area, L2-Hys block normalization. The paper used
  16x16-pixel cells on 224x224 ImageNet maps (14 cells across). On small maps such cells would leave one
  cell or none (28x28 MNIST), so the cell is ``min(H, W) // 7`` pixels, at least 2 and at most 16: about
  7 cells across the short side, which keeps a 6x6 grid of 2x2-cell blocks, and the paper's 16 pixels from
  112 pixels up. Blocks shrink to 1x1 cell when fewer than two cells fit. The similarity is the Pearson
  correlation of the two HOG feature vectors.
- **Floors.** Maps of independent noise score about 0 on the rank metrics (within 1/sqrt(pixels)),
  about 0.01 on SSIM (its stabilizing constant), and 0.03 to 0.16 on HOG, more for non-Gaussian pixel
  values: the pixel grid favours some orientation bins in every image alike. The paper's "below 0.005
  for a random mask" does not hold for HOG here: read it against the report's random-mask row.
- **Undefined values.** A map that is constant (the all-zero GradCAM of a randomized model) or holds
  non-finite values has no ranks, structure or gradients: all four metrics are NaN for that image, and
  :mod:`workers.engine.statistics` counts it instead of averaging it. A metric is also NaN where its own
  normalized map is constant (|.| of a +-c pattern).
"""

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from workers.core.audit_settings import Metric
from workers.core.probes import MIN_SIDE  # the smallest SSIM window and HOG gradient need 3 pixels a side

CLIP_PERCENTILE = 99.0
SSIM_WIN_SIZE = 7
SSIM_K1, SSIM_K2 = 0.01, 0.03
HOG_ORIENTATIONS = 9
HOG_MAX_CELL = 16
HOG_CELLS_ACROSS = 7
HOG_EPS = 1e-5
HOG_CLIP = 0.2  # L2-Hys

MapBatch = np.ndarray | Tensor


def normalize_absolute(maps: MapBatch) -> Tensor:
    """[N, C, H, W] -> [N, H, W] in [0, 1]: sum |.| over channels, clip at the 99th percentile, scale."""
    return _absolute(_as_nchw(maps), float32_magnitudes=False)[0]


def _absolute(maps: Tensor, float32_magnitudes: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The normalized absolute maps, and what one sort gave on the way: the magnitudes [N, P] in ascending
    order, that order, and each image's clip. Clipping and scaling keep the order (ties get the same
    average rank in any order, so the sort need not be stable). ``float32_magnitudes``: every magnitude
    is a float32 (one channel of a float32 map), which sorts faster."""
    magnitude = maps.abs().sum(dim=1)
    ordered, order = _sorted_magnitudes(_flat(magnitude), float32_magnitudes)
    clip = _clip_values(ordered)
    return _clipped(magnitude, clip, signed=False), ordered, order, clip


def normalize_signed(maps: MapBatch) -> Tensor:
    """[N, C, H, W] -> [N, H, W] in [-1, 1]: sum over channels, clip |.| at its 99th percentile, scale."""
    summed = _as_nchw(maps).sum(dim=1)
    return _clipped(summed, _clip_values(_flat(summed.abs()).sort(dim=1).values), signed=True)


def is_degenerate(maps: MapBatch) -> Tensor:
    """Which images ([N, ...]) have a constant map or a non-finite value: no metric is defined for them.

    Constant means max - min within a few units of the dtype's resolution of the map's magnitude, so a
    float32 map that differs only by rounding counts as constant.
    """
    return _degenerate(_tensor(maps))[1]


def _degenerate(maps: Tensor) -> tuple[Tensor, Tensor]:
    """(N,) maps holding a non-finite value, and (N,) maps that are degenerate (that, or constant)."""
    flat = _flat(maps)
    finite = torch.isfinite(flat).all(dim=1)
    if not bool(finite.all()):
        flat = torch.where(finite[:, None], flat, 0)
    return ~finite, ~finite | _constant_rows(flat)


@dataclass(frozen=True)
class PreparedMaps:
    """What every comparison needs of one batch of maps, computed once: an audit compares each stage's
    maps with the trained maps of the same images and of other images, and the trained maps with many.
    Correlations are kept as centered unit vectors and SSIM's window means and variances per map, so a
    comparison is a dot product and one more window mean."""

    invalid: Tensor  # (N,) degenerate maps (constant or non-finite): every metric is NaN for them
    non_finite: Tensor  # (N,) maps holding NaN or inf, which no verdict may rest on
    abs_ranks: Tensor  # (N, P) ranks of the normalized absolute map, centered, unit norm
    abs_constant: Tensor
    signed_ranks: Tensor  # (N, P) the same for the normalized signed map
    signed_constant: Tensor
    unit: Tensor  # (N, 1, H, W) absolute map min-max scaled to [0, 1], for SSIM
    unit_constant: Tensor
    unit_mean: Tensor  # (N, 1, H', W') SSIM window means of ``unit``
    unit_variance: Tensor  # (N, 1, H', W') SSIM window sample variances of ``unit``
    hog: Tensor  # (N, F) HOG features of ``unit``, centered, unit norm
    hog_constant: Tensor

    def __len__(self) -> int:
        return len(self.invalid)

    @property
    def constant(self) -> Tensor:
        """(N,) maps that are constant (degenerate, but finite): the all-zero GradCAM."""
        return self.invalid & ~self.non_finite

    def __getitem__(self, images: np.ndarray | Tensor) -> "PreparedMaps":
        """The same quantities for a reordering or subset of the images."""
        index = torch.as_tensor(images, device=self.invalid.device)
        return PreparedMaps(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def prepare(maps: MapBatch) -> PreparedMaps:
    """Normalize, rank and HOG a batch of raw maps [N, C, H, W] once, for any number of comparisons."""
    maps = _checked(_tensor(maps))
    non_finite, invalid = _degenerate(maps)
    float32_magnitudes = maps.dtype == torch.float32 and maps.shape[1] == 1
    maps = maps.double()
    if bool(invalid.any()):
        maps = torch.where(invalid.view(-1, 1, 1, 1), 0, maps)
    absolute_maps, magnitude_sorted, magnitude_order, clip = _absolute(maps, float32_magnitudes)
    # ranks need only the clipped values' order and ties, which scaling by the clip keeps
    abs_ranks, abs_constant = _standardized(
        average_ranks(torch.minimum(magnitude_sorted, clip[:, None]), magnitude_order)
    )
    if bool((maps >= 0).all()):  # GradCAM, VarGrad, edges: the signed map is the absolute one
        signed_ranks, signed_constant = abs_ranks, abs_constant
    else:
        summed = maps.sum(dim=1)
        if maps.shape[1] == 1:  # |sum| is the magnitude: its percentile is known, and so is its order
            signed_order = _signed_order(_flat(summed), magnitude_order)
        else:
            clip = _clip_values(_flat(summed.abs()).sort(dim=1).values)
            signed_order = _flat(summed).sort(dim=1).indices
        signed_sorted = _flat(summed).gather(1, signed_order).clamp(-clip[:, None], clip[:, None])
        signed_ranks, signed_constant = _standardized(average_ranks(signed_sorted, signed_order))
    unit = _min_max(absolute_maps)[:, None]
    hog, hog_constant = _standardized(hog_features(unit[:, 0]))
    unit_mean, unit_variance = _window_moments(unit)
    return PreparedMaps(
        invalid=invalid,
        non_finite=non_finite,
        abs_ranks=abs_ranks,
        abs_constant=abs_constant,
        signed_ranks=signed_ranks,
        signed_constant=signed_constant,
        unit=unit,
        unit_constant=_constant_rows(_flat(unit)),
        unit_mean=unit_mean,
        unit_variance=unit_variance,
        hog=hog,
        hog_constant=hog_constant,
    )


def compare_prepared(reference: PreparedMaps, other: PreparedMaps) -> dict[Metric, np.ndarray]:
    """Per-image similarity of two prepared batches of the same shape; see ``compare``."""
    if reference.unit.shape != other.unit.shape:
        raise ValueError(f"maps differ in shape: {tuple(reference.unit.shape)} vs {tuple(other.unit.shape)}")
    results = {
        Metric.spearman_abs: _dot_rows(reference.abs_ranks, other.abs_ranks),
        Metric.spearman_signed: _dot_rows(reference.signed_ranks, other.signed_ranks),
        Metric.ssim: _ssim_prepared(reference, other),
        Metric.hog: _dot_rows(reference.hog, other.hog),
    }
    undefined = {
        Metric.spearman_abs: reference.abs_constant | other.abs_constant,
        Metric.spearman_signed: reference.signed_constant | other.signed_constant,
        Metric.ssim: reference.unit_constant | other.unit_constant,
        Metric.hog: reference.hog_constant | other.hog_constant,
    }
    invalid = reference.invalid | other.invalid
    return {
        metric: torch.where(undefined[metric] | invalid, torch.nan, values).cpu().numpy()
        for metric, values in results.items()
    }


def compare(reference: MapBatch, other: MapBatch) -> dict[Metric, np.ndarray]:
    """Per-image similarity of two batches of raw maps [N, C, H, W] of the same shape.

    Returns float64 (N,) per metric, NaN where the metric is undefined (see the module docstring).
    """
    reference, other = _tensor(reference), _tensor(other)
    if reference.shape != other.shape:
        raise ValueError(f"maps differ in shape: {tuple(reference.shape)} vs {tuple(other.shape)}")
    return compare_prepared(prepare(reference), prepare(other))


def hog_geometry(height: int, width: int) -> tuple[int, int]:
    """(pixels per cell side, cells per block side) for maps of this size; see the module docstring."""
    side = min(height, width)
    cell = min(HOG_MAX_CELL, max(2, side // HOG_CELLS_ACROSS))
    return cell, 2 if side // cell >= 2 else 1


def ssim_win_size(height: int, width: int) -> int:
    """The default 7-pixel window, or the largest odd window that fits a smaller map."""
    side = min(height, width)
    return SSIM_WIN_SIZE if side >= SSIM_WIN_SIZE else side - (1 - side % 2)


def average_ranks(ordered: Tensor, order: Tensor) -> Tensor:
    """Ranks 1..P of rows given sorted (``ordered``) with their sorting permutation (``order``); ties get
    the mean of the ranks they span (SciPy's ``average``)."""
    count, width = ordered.shape
    if count == 0 or width == 0:
        return ordered.double()
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    positions = torch.arange(width, device=ordered.device).expand(count, width)
    # a tie group spans positions first..last; its rank is their mean plus one
    first = torch.where(starts, positions, 0).cummax(dim=1).values
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    last = torch.where(ends, positions, width).flip(1).cummin(dim=1).values.flip(1)
    tied = (first + last).double() / 2 + 1
    return torch.empty_like(tied).scatter_(1, order, tied)


def _sorted_magnitudes(rows: Tensor, float32_values: bool) -> tuple[Tensor, Tensor]:
    """Each row of non-negative float64 [N, P] values in ascending order, and that order.

    Where every value is a float32 (one-channel maps of a float32 model), the rows are sorted at once as
    int64 keys, the row above the float32's bits (whose order, as integers, is that of the non-negative
    values): one radix sort, 2.5x faster on a CPU than sorting each row's floats. Otherwise by row.
    """
    if not float32_values or rows.numel() == 0:
        return rows.sort(dim=1)
    single = rows.float()
    count, width = rows.shape
    row = torch.arange(count, device=rows.device).view(-1, 1)
    row_keys = row << 32
    keys, flat_order = (single.view(torch.int32).long() + row_keys).flatten().sort()
    order = flat_order.view(count, width) - row * width
    ordered = (keys.view(count, width) - row_keys).int().view(torch.float32).double()
    return ordered, order


def _signed_order(values: Tensor, magnitude_order: Tensor) -> Tensor:
    """The ascending order of signed [N, P] values, from the order of their magnitudes without another
    sort: negatives by falling magnitude, then zeros, then positives by rising magnitude."""
    ordered = values.gather(1, magnitude_order)
    negative, zero = ordered < 0, ordered == 0
    negatives = negative.sum(dim=1, keepdim=True)
    zeros = zero.sum(dim=1, keepdim=True)
    position = torch.where(
        negative,
        negatives - negative.cumsum(dim=1),
        torch.where(
            zero,
            negatives + zero.cumsum(dim=1) - 1,
            negatives + zeros + (~negative & ~zero).cumsum(dim=1) - 1,
        ),
    )
    return torch.empty_like(magnitude_order).scatter_(1, position, magnitude_order)


def _window_moments(unit: Tensor) -> tuple[Tensor, Tensor]:
    """SSIM's window means and sample variances of [N, 1, H, W] maps."""
    mean = _window_mean(unit)
    return mean, _covariance_norm(unit) * (_window_mean(unit * unit) - mean * mean)


def _window_mean(images: Tensor) -> Tensor:
    """Mean of every window inside [N, 1, H, W] maps: box sums along rows, then along columns, each the
    difference of two running sums (a few passes over the map whatever the window; in float64 the running
    sums of values in [0, 1] lose nothing an SSIM can see)."""
    window = ssim_win_size(*images.shape[2:])
    return _box_sums(_box_sums(images, window, dim=3), window, dim=2) / window**2


def _box_sums(values: Tensor, window: int, dim: int) -> Tensor:
    running = values.cumsum(dim)
    inside = values.shape[dim] - window + 1
    return torch.cat(
        [
            running.narrow(dim, window - 1, 1),
            running.narrow(dim, window, inside - 1) - running.narrow(dim, 0, inside - 1),
        ],
        dim,
    )


def _covariance_norm(images: Tensor) -> float:
    window = ssim_win_size(*images.shape[2:])
    return window**2 / (window**2 - 1)


def _ssim_prepared(a: PreparedMaps, b: PreparedMaps) -> Tensor:
    """Mean SSIM of each pair of maps over the windows inside the map."""
    if len(a) == 0:
        return a.unit.new_zeros(0)
    ux, uy = a.unit_mean, b.unit_mean
    covariance = _covariance_norm(a.unit) * (_window_mean(a.unit * b.unit) - ux * uy)
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # data range 1
    index = ((2 * ux * uy + c1) * (2 * covariance + c2)) / (
        (ux * ux + uy * uy + c1) * (a.unit_variance + b.unit_variance + c2)
    )
    return index.flatten(1).mean(dim=1)


def hog_features(maps: Tensor) -> Tensor:
    """[N, H, W] -> [N, F] HOG feature vectors (see the module docstring)."""
    count, height, width = maps.shape
    if count == 0:
        return maps.new_zeros(0, 0)
    cell, block = hog_geometry(height, width)
    rows, columns = height // cell, width // cell
    g_row, g_col = torch.zeros_like(maps), torch.zeros_like(maps)
    g_row[:, 1:-1] = maps[:, 2:] - maps[:, :-2]
    g_col[:, :, 1:-1] = maps[:, :, 2:] - maps[:, :, :-2]
    magnitude = torch.hypot(g_col, g_row)
    orientation = torch.rad2deg(torch.atan2(g_row, g_col)) % 180
    bin_width = 180.0 / HOG_ORIENTATIONS
    # bin i holds orientations in [20 i, 20 (i + 1)), decided by the same comparisons scikit-image makes;
    # 180.0, which a remainder can round to, is in no bin, nor are pixels outside the whole cells
    index = torch.div(orientation, bin_width, rounding_mode="floor").long().clamp_(0, HOG_ORIENTATIONS)
    index -= (orientation < bin_width * index).long()
    index += (orientation >= bin_width * (index + 1)).long()
    slots = rows * columns * HOG_ORIENTATIONS
    index = torch.where(orientation >= 180.0, slots, index + _cell_offsets(height, width, cell, maps.device))
    index = index.clamp_(max=slots) + torch.arange(count, device=maps.device).view(-1, 1, 1) * (slots + 1)
    sums = maps.new_zeros(count * (slots + 1)).scatter_add_(0, index.flatten(), magnitude.flatten())
    histogram = sums.view(count, slots + 1)[:, :slots].view(count, rows, columns, HOG_ORIENTATIONS)
    histogram = histogram / (cell * cell)
    blocks = histogram.unfold(1, block, 1).unfold(2, block, 1)  # [N, rows', columns', 9, block, block]
    blocks = blocks.reshape(count, -1, HOG_ORIENTATIONS * block * block)
    blocks = blocks / torch.sqrt(blocks.square().sum(dim=2, keepdim=True) + HOG_EPS**2)
    blocks = blocks.clamp_max(HOG_CLIP)
    blocks = blocks / torch.sqrt(blocks.square().sum(dim=2, keepdim=True) + HOG_EPS**2)
    return blocks.reshape(count, -1)


def _cell_offsets(height: int, width: int, cell: int, device: torch.device) -> Tensor:
    """[H, W]: the first histogram slot of each pixel's cell; past the last slot outside whole cells."""
    rows, columns = height // cell, width // cell
    row = torch.arange(height, device=device) // cell
    column = torch.arange(width, device=device) // cell
    offsets = (row.view(-1, 1) * columns + column.view(1, -1)) * HOG_ORIENTATIONS
    outside = (row.view(-1, 1) >= rows) | (column.view(1, -1) >= columns)
    return torch.where(outside, rows * columns * HOG_ORIENTATIONS, offsets)


def _tensor(maps: MapBatch) -> Tensor:
    return maps if isinstance(maps, Tensor) else torch.from_numpy(np.asarray(maps))


def _as_nchw(maps: MapBatch) -> Tensor:
    maps = _tensor(maps).double()
    if maps.dim() != 4:
        raise ValueError(f"maps must be [N, C, H, W], got shape {tuple(maps.shape)}")
    return maps


def _checked(maps: Tensor) -> Tensor:
    """The batch as given (dtype kept, for is_degenerate's tolerance), or a ValueError."""
    if maps.dim() != 4:
        raise ValueError(f"maps must be [N, C, H, W], got shape {tuple(maps.shape)}")
    if min(maps.shape[2:]) < MIN_SIDE:
        raise ValueError(f"maps need at least {MIN_SIDE}x{MIN_SIDE} pixels, got {tuple(maps.shape[2:])}")
    return maps


def _flat(maps: Tensor) -> Tensor:
    """[N, ...] -> [N, P], also for N = 0."""
    return maps.reshape(maps.shape[0], math.prod(maps.shape[1:]))


def _clip_values(ordered: Tensor) -> Tensor:
    """Each row's 99th percentile (linear interpolation, as NumPy) of sorted non-negative [N, P] values, or
    its maximum where that is 0."""
    if ordered.shape[1] == 0:
        return ordered.new_zeros(len(ordered))
    position = CLIP_PERCENTILE / 100 * (ordered.shape[1] - 1)
    low, fraction = math.floor(position), position - math.floor(position)
    high = min(low + 1, ordered.shape[1] - 1)
    clip = torch.lerp(ordered[:, low], ordered[:, high], fraction)
    return torch.where(clip > 0, clip, ordered[:, -1])


def _clipped(values: Tensor, clip: Tensor, signed: bool) -> Tensor:
    """Clip each image's values (any shape [N, ...]) at +-its clip value and divide by it; an all-zero map
    (clip 0) stays zero."""
    clip = clip.view(-1, *([1] * (values.dim() - 1)))
    clipped = torch.minimum(values, clip)
    if signed:
        clipped = torch.maximum(clipped, -clip)
    return torch.where(clip > 0, clipped / torch.where(clip > 0, clip, 1), 0)


def _min_max(maps: Tensor) -> Tensor:
    """Scale each image to [0, 1]; a constant image becomes zeros (and is undefined for every metric)."""
    low = maps.amin(dim=(1, 2), keepdim=True)
    span = maps.amax(dim=(1, 2), keepdim=True) - low
    return torch.where(span > 0, (maps - low) / torch.where(span > 0, span, 1), 0)


def _constant_rows(rows: Tensor) -> Tensor:
    """max - min of each row within a few units of the dtype's resolution of its magnitude."""
    if len(rows) == 0 or rows.shape[1] == 0:
        return torch.ones(len(rows), dtype=torch.bool, device=rows.device)
    dtype = rows.dtype if rows.is_floating_point() else torch.float64
    high, low = rows.amax(dim=1), rows.amin(dim=1)
    return high - low <= 8 * torch.finfo(dtype).eps * torch.maximum(high.abs(), low.abs())


def _standardized(rows: Tensor) -> tuple[Tensor, Tensor]:
    """Rows centered and scaled to unit norm, so a Pearson correlation is a dot product; and which rows
    are constant (no correlation defined; their row is zeros)."""
    constant = _constant_rows(rows)
    centered = rows - rows.mean(dim=1, keepdim=True) if rows.shape[1] else rows
    norm = torch.linalg.vector_norm(centered, dim=1, keepdim=True)
    return torch.where(constant[:, None], 0, centered / torch.where(norm > 0, norm, 1)), constant


def _dot_rows(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(dim=1).clamp(-1.0, 1.0)
