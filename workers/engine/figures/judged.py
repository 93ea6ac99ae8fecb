"""One comparison per draw: the judged statistic of input invariance, random logit and efficient MPRT,
and efficient MPRT's entropy histograms."""

import math
import textwrap

import numpy as np
import torch
from matplotlib.lines import Line2D

from workers.core.report import (
    ENTROPY_MASK,
    ENTROPY_RANDOM,
    ENTROPY_TRAINED,
    AuditReport,
    MethodResult,
    TestResult,
)
from workers.engine.checks.mprt import map_histograms
from workers.engine.figures.common import (
    ENTROPY_COLOURS,
    FONT_PX,
    NARROW_PX,
    OUTCOME_COLOURS,
    PASSES_ABOVE,
    TEST_TITLES,
    TITLE_PX,
    WIDE_PX,
    Drawing,
    FigureImage,
    MapReader,
    drawing,
    method_label,
    new_figure,
)
from workers.engine.figures.curves import as_values, or_nan, results_of


def judged_figure(report: AuditReport, test: str) -> FigureImage:
    passes = "above" if test in PASSES_ABOVE else "below"
    return FigureImage(
        name=f"{test}-judged.png",
        title=f"{TEST_TITLES[test]}: judged statistic",
        caption=f"Each method's judged statistic: mean (dot) and 95% interval over images and draws (bar), "
        f"each draw's mean (rings), in its verdict's colour. A method passes when the whole interval lies "
        f"{passes} the limit (solid line; the pass side shaded)."
        + (
            " Gray: what maps score without the class's content, random masks (bar) and maps of "
            "different images (cross)."
            if test == "random_logit"
            else ""
        ),
        test=test,
        wide=_draw_judged(report, test, WIDE_PX),
        narrow=_draw_judged(report, test, NARROW_PX),
    )


def judged_results(report: AuditReport, test: str) -> list[tuple[MethodResult, TestResult]]:
    """The methods with a verdict on ``test`` (baselines have none)."""
    return [(m, r) for m, r in results_of(report, test) if r.verdict is not None]


def _draw_judged(report: AuditReport, test: str, width: int) -> Drawing:
    """One row per judged method: the estimate and its interval against the verdict's limit, on a
    symmetric log axis for input invariance, whose differences span orders of magnitude (an invariant
    method's is rounding, 1e-7)."""
    results = judged_results(report, test)
    figure = new_figure(width, 130 + 30 * len(results), layout="constrained")
    axis = figure.subplots()
    limit = results[0][1].verdict.limit  # type: ignore[union-attr]
    lowest = np.nanmin(
        [or_nan(v) for _, r in results for v in (r.verdict.estimate.ci95_low, *r.verdict.estimate.draw_means)]  # type: ignore[union-attr]
        + [0.0]
    )
    for row, (method, result) in enumerate(results):
        verdict = result.verdict
        assert verdict is not None
        colour, estimate = OUTCOME_COLOURS[verdict.outcome], verdict.estimate
        if estimate.ci95_low is not None and estimate.ci95_high is not None:
            axis.plot(
                [estimate.ci95_low, estimate.ci95_high], [row, row], color=colour, linewidth=4, alpha=0.5
            )
        draws = as_values(estimate.draw_means)
        axis.plot(draws, np.full(len(draws), row), "o", markerfacecolor="none", color=colour, markersize=6)
        axis.plot([or_nan(estimate.mean)], [row], "o", color=colour, markersize=6)
        if test == "random_logit" and verdict.metric is not None:
            mask = method.random_mask_calibration[verdict.metric].mean
            cross = result.stages[-1].cross_image_floor[verdict.metric].mean
            axis.plot([or_nan(mask)], [row], marker="|", color="gray", markersize=14, linestyle="none")
            axis.plot([or_nan(cross)], [row], marker="x", color="gray", markersize=7, linestyle="none")
    axis.axvline(limit, color="black", linewidth=1.2)
    if test == "input_invariance":
        axis.set_xscale("symlog", linthresh=max(limit / 10, 1e-12))
        axis.set_xlim(0, None)
    elif test == "efficient_mprt":
        axis.set_xlim(-1.05, 1.05)
    else:  # a similarity: down to -1 only where a value lies below 0
        axis.set_xlim(-0.05 if min(limit, lowest) >= -0.05 else -1.05, 1.05)
    low, high = axis.get_xlim()
    axis.axvspan(*((limit, high) if test in PASSES_ABOVE else (low, limit)), color="#e8f5e9", zorder=0)
    axis.set_ylim(len(results) - 0.5, -0.5)
    axis.set_yticks(range(len(results)), [method_label(m) for m, _ in results])
    axis.tick_params(labelsize=FONT_PX)
    axis.grid(axis="x", color="#eeeeee", linewidth=0.8)
    statistic = results[0][1].verdict.statistic  # type: ignore[union-attr]
    axis.set_xlabel(textwrap.fill(statistic, max(30, (width - 60) // 8)), fontsize=FONT_PX)
    figure.legend(
        handles=_judged_handles(test),
        loc="outside upper center",
        ncol=3 if width <= NARROW_PX else 6,
        fontsize=FONT_PX,
        frameon=False,
        handlelength=1.6,
    )
    return drawing(figure)


def _judged_handles(test: str) -> list[Line2D]:
    handles = [
        Line2D([], [], color="gray", marker="o", linestyle="none", label="mean"),
        Line2D([], [], color="gray", linewidth=4, alpha=0.5, label="95% interval"),
        Line2D([], [], color="gray", marker="o", markerfacecolor="none", linestyle="none", label="draws"),
        Line2D([], [], color="black", linewidth=1.2, label="limit"),
    ]
    if test == "random_logit":
        handles += [
            Line2D([], [], color="gray", marker="|", markersize=12, linestyle="none", label="random mask"),
            Line2D([], [], color="gray", marker="x", linestyle="none", label="different images"),
        ]
    return handles


def entropy_figure(report: AuditReport, reader: MapReader, test: str) -> FigureImage:
    bins = report.settings.efficient_mprt_bins
    return FigureImage(
        name=f"{test}-histograms.png",
        title=f"{TEST_TITLES[test]}: complexity of the maps",
        caption=f"Per method, the share of a map's pixels in each of {bins} bins of its normalized absolute "
        "value (mean over the probe images): the trained model's maps, the fully randomized model's (first "
        "draw) and a uniform random mask's. The entropy of these histograms is the maps' complexity; a map "
        "that explains the model should spread towards the mask's when the model is random.",
        test=test,
        wide=_draw_entropy(report, reader, test, narrow=False),
        narrow=_draw_entropy(report, reader, test, narrow=True),
    )


def _draw_entropy(report: AuditReport, reader: MapReader, test: str, narrow: bool) -> Drawing:
    results = list(results_of(report, test))
    bins = report.settings.efficient_mprt_bins
    if narrow:
        figure = new_figure(NARROW_PX, 170 * len(results) + 110, layout="constrained")
        axes = figure.subplots(len(results), 1, sharex=True, squeeze=False)[:, 0]
    else:
        columns = min(len(results), 4)
        rows = math.ceil(len(results) / columns)
        figure = new_figure(WIDE_PX, 230 * rows + 90, layout="constrained")
        axes = figure.subplots(rows, columns, sharex=True, squeeze=False).ravel()
        for unused in axes[len(results) :]:
            unused.set_visible(False)
    centres = (np.arange(bins) + 0.5) / bins
    for axis, (method, result) in zip(axes, results, strict=False):
        measures = result.stages[-1].measures
        entropy = {
            name: or_nan(measures[name].mean) if name in measures else np.nan
            for name in (ENTROPY_TRAINED, ENTROPY_RANDOM, ENTROPY_MASK)
        }
        for row, (stage, name) in enumerate(
            ((0, ENTROPY_TRAINED), (result.stages[-1].index, ENTROPY_RANDOM))
        ):
            colour = ENTROPY_COLOURS[name]
            maps = reader.maps(method.name, test, stage, every_image=True)
            if maps is None:
                continue
            histograms, defined = map_histograms(torch.from_numpy(np.array(maps)), bins)
            if bool(defined.any()):
                mean = histograms[defined].mean(dim=0).numpy()
                axis.step(centres, mean, where="mid", color=colour, linewidth=1.2)
            axis.text(
                0.98,
                0.85 - 0.1 * row,
                f"H {entropy[name]:.2f}",
                color=colour,
                transform=axis.transAxes,
                ha="right",
                fontsize=FONT_PX,
            )
        axis.axhline(1 / bins, color="gray", linestyle=":", linewidth=1)
        axis.set_yscale("log")
        axis.set_title(f"{method_label(method)} (mask H {entropy[ENTROPY_MASK]:.2f})", fontsize=TITLE_PX)
        axis.tick_params(labelsize=FONT_PX)
    figure.supxlabel("normalized absolute value of a map's pixel", fontsize=FONT_PX)
    figure.supylabel("share of the map's pixels", fontsize=FONT_PX)
    handles = [
        Line2D([], [], color=ENTROPY_COLOURS[ENTROPY_TRAINED], label="trained model"),
        Line2D([], [], color=ENTROPY_COLOURS[ENTROPY_RANDOM], label="every layer random"),
        Line2D([], [], color="gray", linestyle=":", label="random mask"),
    ]
    figure.legend(
        handles=handles, loc="outside upper center", ncol=3, fontsize=FONT_PX, frameon=False, handlelength=1.6
    )
    return drawing(figure)
