"""Quantus 0.6's later randomisation metrics (SmoothMPRT, EfficientMPRT, RandomLogit) on the LeNet probes;
run by bench/quantus_later.py with its own virtualenv's Python (Quantus is LGPL and never a dependency of
the project), so it imports nothing of the project: the LeNet and the probes come from quantus_side.py.

    <quantus venv>/bin/python bench/quantus_later_side.py DATA ROUNDS SAMPLES VARIANTS

Prints one JSON line per round: the seconds of each metric over the three methods (imports, the model and
the probes excluded) and its numbers, with the settings that match the engine's. VARIANTS 1 adds, after
the rounds and untimed, one line of the same metrics with Quantus's own defaults where they differ
(EfficientMPRT and RandomLogit on signed maps), EfficientMPRT with the engine's histogram and RandomLogit
with the engine's SSIM.
Every map explains the trained model's prediction, the engine's default target.
"""

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import quantus
import scipy.stats
import torch
from quantus_side import call, lenet, probes  # this script's folder, bench/, comes first on sys.path
from skimage.metrics import structural_similarity

# Quantus's "Gradient" is the signed gradient; its "Saliency" is captum's, which takes |.| by default, so
# SmoothMPRT would average absolute gradients where the engine averages signed ones and takes |.| after.
METHODS = {
    "gradient": "Gradient",
    "integrated_gradients": "IntegratedGradients",  # 10 steps, trapezoid rule, zero baseline
    "gradient_x_input": "InputXGradient",
}
QUIET = {"disable_warnings": True, "display_progressbar": False}
SEED = 42  # Quantus's default; the noisy copies of SmoothMPRT come from NumPy's global generator


def ssim_2d(side: int) -> Callable[..., list[float]]:
    """The engine's SSIM as a Quantus similarity_func: each flattened map back to side x side, min-max
    scaled to [0, 1], data_range 1, a 7 x 7 uniform window (the 99th-percentile clip left out)."""

    def unit(a: np.ndarray) -> np.ndarray:
        low, high = a.min(), a.max()
        return (a.reshape(side, side) - low) / (high - low) if high > low else np.full((side, side), np.nan)

    def similarity(a: np.ndarray, b: np.ndarray, batched: bool = False, **kwargs: object) -> list[float]:
        pairs = zip(a, b, strict=True) if batched else [(a, b)]
        scores = []
        for aa, bb in pairs:
            ua, ub = unit(aa), unit(bb)
            finite = np.isfinite(ua).all() and np.isfinite(ub).all()
            scores.append(
                float(structural_similarity(ua, ub, win_size=7, data_range=1.0)) if finite else np.nan
            )
        return scores

    return similarity


def clipped_entropy(a: np.ndarray, x: np.ndarray, **kwargs: object) -> float:
    """The engine's complexity as a Quantus complexity_func: the discrete entropy of an n_bins histogram
    over [0, 1] of the absolute map clipped at its 99th percentile (its maximum where that is 0) and
    scaled, instead of Quantus's histogram over the map's own min-max range."""
    magnitude = np.abs(a).ravel()
    clip = np.percentile(magnitude, 99) or magnitude.max()
    if clip == 0:
        return np.nan
    bins = int(kwargs.get("n_bins", 100))
    counts, _ = np.histogram(np.minimum(magnitude, clip) / clip, bins=bins, range=(0, 1))
    return float(scipy.stats.entropy(counts))


def smooth_mprt(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, samples: int) -> dict:
    """Mean Spearman of |smoothed maps| per layer, bottom-up; 'original' compares two smoothings of the
    trained model's maps (Quantus draws new noise for every model, the trained one included)."""
    np.random.seed(SEED)
    result = {}
    for name, method in METHODS.items():
        metric = quantus.SmoothMPRT(
            layer_order="bottom_up",
            nr_samples=samples,
            noise_magnitude=0.1,
            similarity_func=quantus.similarity_func.correlation_spearman,
            abs=True,
            normalise=True,
            return_average_correlation=False,
            seed=SEED,
            **QUIET,
        )
        scores = call(metric, model, x, y, method, quantus.explain)
        result[name] = {layer: float(np.nanmean(values)) for layer, values in scores.items()}
    return result


def efficient_mprt(
    model: torch.nn.Module, x: np.ndarray, y: np.ndarray, absolute: bool, complexity: Callable | None = None
) -> dict:
    """Per image: the discrete entropy (100 bins over each map's own range, unless ``complexity``) of the
    trained and the fully randomized model's maps, and Quantus's score, the relative rise; means over
    images."""
    result = {}
    for name, method in METHODS.items():
        metric = quantus.EfficientMPRT(
            complexity_func=complexity,
            layer_order="bottom_up",
            abs=absolute,
            normalise=False,
            seed=SEED,
            **QUIET,
        )
        rise = call(metric, model, x, y, method, quantus.explain)
        entropies = list(metric.explanation_scores_by_layer.values())
        result[name] = {
            "entropy_trained": float(np.nanmean(entropies[0])),
            "entropy_random": float(np.nanmean(entropies[-1])),
            "entropy_rise": float(np.nanmean(rise)),
            "bins": metric.complexity_func_kwargs["n_bins"],
        }
    return result


def random_logit(
    model: torch.nn.Module, x: np.ndarray, y: np.ndarray, absolute: bool, similarity: Callable | None = None
) -> dict:
    """Mean similarity (Quantus's SSIM of the flattened maps unless ``similarity``) between the map of
    the explained class and a map of a class drawn uniformly from the 9 others."""
    result = {}
    for name, method in METHODS.items():
        metric = quantus.RandomLogit(
            num_classes=10, seed=SEED, abs=absolute, normalise=True, similarity_func=similarity, **QUIET
        )
        result[name] = float(np.nanmean(call(metric, model, x, y, method, quantus.explain)))
    return result


def main() -> None:
    data, rounds, samples, variants = (
        Path(sys.argv[1]),
        int(sys.argv[2]),
        int(sys.argv[3]),
        sys.argv[4] == "1",
    )
    x = probes(data)
    model = lenet(data)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).argmax(dim=1).numpy()  # the engine's default target
    checks = {
        "smooth_mprt": lambda: smooth_mprt(model, x, y, samples),
        "efficient_mprt": lambda: efficient_mprt(model, x, y, absolute=True),
        "random_logit": lambda: random_logit(model, x, y, absolute=True),
    }
    for _ in range(rounds):
        seconds, numbers = {}, {}
        for check, run in checks.items():
            started = time.perf_counter()
            numbers[check] = run()
            seconds[check] = time.perf_counter() - started
        print(json.dumps({"seconds": seconds, **numbers}), flush=True)
    if variants:
        side = int(np.sqrt(np.prod(x.shape[1:])))
        print(
            json.dumps(
                {
                    "variants": {
                        "efficient_mprt_signed": efficient_mprt(model, x, y, absolute=False),
                        "efficient_mprt_clipped": efficient_mprt(
                            model, x, y, absolute=True, complexity=clipped_entropy
                        ),
                        "random_logit_signed": random_logit(model, x, y, absolute=False),
                        "random_logit_ssim_2d": random_logit(
                            model, x, y, absolute=True, similarity=ssim_2d(side)
                        ),
                    }
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
