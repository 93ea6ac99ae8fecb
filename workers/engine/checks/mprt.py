"""Smooth MPRT and efficient MPRT (Hedström, Weber, Lapuschkin, Höhne, "A Fresh Look at Sanity Checks
for Saliency Maps", 2023/2024).

**Smooth MPRT** is the cascading test on maps averaged over noisy copies of each probe (Quantus: 50
copies, noise std 0.1 x (max - min), bottom-up): averaging removes the shattered-gradient noise that lets
a method's maps decorrelate for reasons other than the model. The trained reference is averaged over the
same copies, every stage uses the same copies, and the verdict is the cascading test's, on the curve.

**Efficient MPRT** compares only the trained and the fully randomized model, by the complexity of their
maps: the discrete entropy of a histogram of each normalized absolute map. A map that explains a model
should turn noisier (higher entropy) when every layer of the model is random. Hedström et al.'s score is
each image's relative rise (H(random) - H(trained)) / H(trained), reported as ``entropy_rise``. Its
scale depends on the map's size and on how complex the trained map already is: 100 bins over a 16x16
map leave a random mask about 4.39 nats, and a trained Gradient map on the digits CNN already has 3.9,
so no model could raise it by more than 0.12. The verdict therefore judges the share of the way from
the trained map's entropy to a uniform random mask's that the randomized model's map goes,
(H(random) - H(trained)) / (H(mask) - H(trained)): 0 for a map that ignores the model, 1 for one that
turns to noise, clipped to [-1, 1] (a fall larger than the headroom counts as -1, so an image whose
trained map is already nearly as complex as noise cannot dominate the mean). Pass when its lower 95%
bound lies above ``efficient_mprt_min_share`` (docs/decisions/0023).
A constant map (GradCAM's all-zero map of a random model) has no histogram to speak of: undefined, counted.
"""

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from workers.core.audit_settings import LayerOrder, RandomizationTest
from workers.core.report import (
    ENTROPY_MASK,
    ENTROPY_RANDOM,
    ENTROPY_RISE,
    ENTROPY_SHARE,
    ENTROPY_TRAINED,
    Stage,
    Verdict,
)
from workers.engine.checks.base import RetrainFloor, SanityCheck, StageValues, judged_table
from workers.engine.checks.parameters import Cascading
from workers.engine.parameter_stages import Smoothing, StageModel, randomized_stages
from workers.engine.similarity import is_degenerate, normalize_absolute
from workers.engine.verdict import decide

MASK_STREAM = 0xCA11  # the audit's random-mask calibration uses the same stream
_NOISE_STREAM = 0x53A7  # the noisy copies' seed, apart from every other use of the audit's seed


class SmoothMPRT(Cascading):
    test = RandomizationTest.smooth_mprt
    shares_trained = False  # noisy inputs: the trained model's recorded forward passes do not apply

    def order(self) -> LayerOrder | None:
        return self.context.settings.smooth_mprt_order

    def smoothing(self) -> Smoothing:
        settings = self.context.settings
        seed = int(np.random.SeedSequence([settings.seed, _NOISE_STREAM]).generate_state(1)[0])
        return Smoothing(settings.smooth_mprt_samples, settings.smooth_mprt_noise, seed)

    def stage_models(self, draw: int) -> Iterator[StageModel]:
        context = self.context
        settings = context.settings.model_copy(update={"order": self.order()})
        return randomized_stages(context.model, context.stage_blocks, True, settings, draw, self.smoothing())

    def reference_count(self, draws: int) -> int:
        return 1  # the smoothed trained maps

    def reference(self) -> StageModel | None:
        smoothing = self.smoothing()
        return StageModel(
            0,
            "trained model, smoothed",
            [],
            self.context.model,
            "trained_smoothed",
            note=f"maps averaged over {smoothing.samples} noisy copies of each probe (noise std "
            f"{smoothing.level} x its range), the same copies at every stage",
            smoothing=smoothing,
        )


def map_histograms(maps: Tensor, bins: int) -> tuple[Tensor, Tensor]:
    """[images, bins]: each normalized absolute map's share of pixels per bin over [0, 1] (|.| summed
    over channels, clipped at the 99th percentile, scaled to [0, 1]), and [images]: whether the map is
    defined: not holding NaN or inf, not constant up to rounding (the metrics' rule, ``is_degenerate``).
    An undefined map is histogrammed as a map of zeros."""
    finite = ~is_degenerate(maps).to(maps.device)
    unit = normalize_absolute(torch.where(finite.view(-1, *([1] * (maps.dim() - 1))), maps, 0)).flatten(1)
    index = (unit * bins).long().clamp(0, bins - 1)
    counts = torch.zeros(len(unit), bins, dtype=torch.float64, device=unit.device)
    counts.scatter_add_(1, index, torch.ones_like(index, dtype=torch.float64))
    return counts / counts.sum(dim=1, keepdim=True), finite


def map_entropy(maps: Tensor, bins: int) -> np.ndarray:
    """[images]: the discrete entropy (nats) of each map's ``map_histograms``; NaN where undefined."""
    p, finite = map_histograms(maps, bins)
    entropy = -(torch.where(p > 0, p * p.log(), 0)).sum(dim=1)
    return torch.where(finite, entropy, torch.nan).cpu().numpy()


class EfficientMPRT(SanityCheck):
    """One stage per draw: every layer randomized (the cascade's last model, with its seeds)."""

    test = RandomizationTest.efficient_mprt
    needs_raw_maps = True  # the entropy of each raw map

    def draws(self) -> int:
        return self.context.settings.draws

    def stage_count(self) -> int:
        return 1

    def stage_models(self, draw: int) -> Iterator[StageModel]:
        context = self.context
        *_, last = randomized_stages(context.model, context.stage_blocks, True, context.settings, draw)
        yield StageModel(1, "every layer randomized", last.randomized, last.model, "all_randomized")

    def measure(self, trained: Tensor, stage: Tensor) -> dict[str, np.ndarray]:
        settings = self.context.settings
        bins = settings.efficient_mprt_bins
        rng = np.random.default_rng([settings.seed, MASK_STREAM])
        masks = rng.random(tuple(trained.shape), dtype=np.float32)
        before, after = map_entropy(trained, bins), map_entropy(stage, bins)
        noise = map_entropy(torch.from_numpy(masks), bins)
        with np.errstate(divide="ignore", invalid="ignore"):
            rise = np.where(before > 0, (after - before) / before, np.nan)
            share = np.where(noise > before, (after - before) / (noise - before), np.nan).clip(-1, 1)
        return {
            ENTROPY_SHARE: share,
            ENTROPY_RISE: rise,
            ENTROPY_TRAINED: before,
            ENTROPY_RANDOM: after,
            ENTROPY_MASK: noise,
        }

    def judge(self, trained: Stage, stages: list[StageValues], retrain_floor: RetrainFloor | None) -> Verdict:
        (randomized,) = stages
        table = np.stack(randomized.measures[ENTROPY_SHARE])
        limit = self.context.settings.efficient_mprt_min_share
        bins = self.context.settings.efficient_mprt_bins
        judged = judged_table(
            f"share of the way from the trained maps' entropy ({bins}-bin histogram) to a random "
            "mask's that the fully randomized model's maps go",
            table,
            limit,
            trained,
            stages,
            higher_passes=True,
        )
        return decide(judged, self.rule).model_copy(update={"metric": None})
