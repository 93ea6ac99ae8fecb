"""Similarity curves: each method's similarity to the trained maps by stage, with intervals and
levels."""

import math
from collections.abc import Iterator

import numpy as np
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from workers.core.audit_settings import LayerOrder, Metric, StageUnit
from workers.core.report import (
    AuditReport,
    MethodResult,
    TestResult,
)
from workers.engine.figures.common import (
    DATA_COLUMNS,
    FONT_PX,
    METRIC_TITLES,
    NARROW_PX,
    PLAIN_STYLE,
    TEST_TITLES,
    TITLE_PX,
    WIDE_PX,
    Drawing,
    FigureImage,
    drawing,
    method_label,
    new_figure,
    result_of,
    short_label,
)


def curves_figure(report: AuditReport, test: str) -> FigureImage:
    if test == "data":
        caption = (
            "Per metric, each method's similarity to the trained model's maps: of its random-label twins "
            "(mean, 95% interval) and of models retrained on the true labels, the retrain floor (dash-dot "
            "from the twins, whose similarity must lie well below it). The short bar: the floor less the "
            "gap, which the twins must lie below for the judged metric. Dashed: maps of different images; "
            "dotted: random masks."
        )
    else:
        caption = (
            "Per metric, each method's similarity to the trained model's maps at each stage (mean and 95% "
            "band over images and draws). Dashed: maps of different images under the same model, the "
            "similarity left without image content; dotted: random masks."
        )
        if test == "smooth_mprt":
            caption += (
                " The reference is the trained model's smoothed maps. Thin dash-dot, where the plain "
                "cascading test walked the same stages: its curve, without the smoothing."
            )
    return FigureImage(
        name=f"{test}-similarity.png",
        title=f"{TEST_TITLES[test]}: similarity",
        caption=caption,
        test=test,
        wide=_draw_curves(report, test, narrow=False),
        narrow=_draw_curves(report, test, narrow=True),
    )


def _draw_curves(report: AuditReport, test: str, narrow: bool) -> Drawing:
    """One panel per metric, side by side (a column of them on a phone), and one legend for them all,
    above them: outside every axes, so it never covers a curve."""
    metrics = list(Metric)
    panel = _data_panel if test == "data" else _parameter_panel
    if narrow:
        figure = new_figure(NARROW_PX, 190 * len(metrics) + 200, layout="constrained")
        axes = figure.subplots(len(metrics), 1, sharex=True, squeeze=False)[:, 0]
    else:
        figure = new_figure(WIDE_PX, 390, layout="constrained")
        axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    handles: list[Line2D] = []
    for axis, metric in zip(axes, metrics, strict=True):
        handles = panel(axis, report, test, metric)
        _levels(axis, report, test, metric)
        axis.set_title(METRIC_TITLES[metric], fontsize=TITLE_PX)
        axis.set_ylim(-1.05 if metric is not Metric.ssim else -0.05, 1.05)
        axis.tick_params(labelsize=FONT_PX)
        axis.grid(axis="y", color="#eeeeee", linewidth=0.8)
    figure.supylabel("similarity to the trained model's maps", fontsize=FONT_PX)
    figure.supxlabel(_x_label(report, test), fontsize=FONT_PX)
    figure.legend(
        handles=handles + _level_handles(report, test),
        loc="outside upper center",  # the bottom holds the x axes' label
        ncol=2 if narrow else 6,
        fontsize=FONT_PX,
        frameon=False,
        handlelength=1.6,
        columnspacing=1.0,
    )
    return drawing(figure)


_SINGLE_STAGE_LABELS = {
    "data": "maps compared with the trained model's",
    "input_invariance": "maps of the shifted inputs compared with the trained model's",
    "random_logit": "maps of another class compared with the explained class's",
    "efficient_mprt": "maps of the fully randomized model compared with the trained model's",
}


def _x_label(report: AuditReport, test: str) -> str:
    if test in _SINGLE_STAGE_LABELS:
        return _SINGLE_STAGE_LABELS[test]
    unit = "block" if report.settings.stages is StageUnit.blocks else "layer"
    if test not in ("cascading", "smooth_mprt"):
        return f"{unit} randomized alone"
    order = next((t.order for m in report.methods for t in m.tests if t.test.value == test), None)
    direction = "bottom (input) up" if order is LayerOrder.bottom_up else "top (logits) down"
    return f"{unit}s randomized, from the {direction}"


def results_of(report: AuditReport, test: str) -> Iterator[tuple[MethodResult, TestResult]]:
    for method in report.methods:
        result = result_of(method, test)
        if result is not None:
            yield method, result


def _parameter_panel(axis: Axes, report: AuditReport, test: str, metric: Metric) -> list[Line2D]:
    """Each method's mean similarity per stage with its 95% band."""
    handles, labels = [], []
    for method, result in results_of(report, test):
        labels = [short_label(stage) for stage in result.stages]
        summaries = [stage.similarity[metric] for stage in result.stages]
        x = np.arange(len(summaries))
        mean = as_values(s.mean for s in summaries)
        line = axis.plot(x, mean, marker="o", markersize=3, label=method_label(method))[0]
        low, high = as_values(s.ci95_low for s in summaries), as_values(s.ci95_high for s in summaries)
        axis.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        plain = _plain_cascading(method, result)
        if plain is not None:
            means = as_values(stage.similarity[metric].mean for stage in plain.stages)
            axis.plot(x, means, color=line.get_color(), linestyle=PLAIN_STYLE, linewidth=1, alpha=0.8)
        handles.append(line)
    shown = max(1, math.ceil(len(labels) / 16))  # a deep model's stages: every k-th name
    ticks = list(range(0, len(labels), shown))
    axis.set_xticks(ticks, [labels[i] for i in ticks], rotation=55, ha="right", rotation_mode="anchor")
    return handles


def _plain_cascading(method: MethodResult, result: TestResult) -> TestResult | None:
    """Smooth MPRT beside the plain cascading test of the same method, where that walked the same
    stages (the same order): how much of the plain curve's fall was the method's own noise."""
    plain = result_of(method, "cascading") if result.test.value == "smooth_mprt" else None
    if plain is None or [s.label for s in plain.stages[1:]] != [s.label for s in result.stages[1:]]:
        return None
    return plain


def _data_panel(axis: Axes, report: AuditReport, test: str, metric: Metric) -> list[Line2D]:
    """Per method: the trained model (1), its twins (mean, 95% interval) and the retrain floor, the
    similarity of true-label models (mean, interval), drawn back as a line to the twins' column; for the
    judged metric a bar at the floor less the gap, the level the twins must lie below."""
    handles = []
    results = list(results_of(report, test))
    for k, (method, result) in enumerate(results):
        shift = (k - (len(results) - 1) / 2) * 0.03  # side by side, so the intervals stay apart
        twins = result.stages[-1].similarity[metric]
        line = axis.plot(
            [0, 1 + shift], [1, or_nan(twins.mean)], marker="o", markersize=4, label=method_label(method)
        )[0]
        colour = line.get_color()
        _interval(axis, 1 + shift, twins.ci95_low, twins.ci95_high, colour)
        handles.append(line)
        floor = result.retrain_floor[metric] if result.retrain_floor is not None else None
        if floor is None or floor.mean is None:
            continue
        axis.plot([1 + shift, 2 + shift], [floor.mean, floor.mean], color=colour, linestyle="-.", linewidth=1)
        axis.plot([2 + shift], [floor.mean], marker="D", markersize=4, color=colour)
        _interval(axis, 2 + shift, floor.ci95_low, floor.ci95_high, colour)
        verdict = result.verdict
        if verdict is not None and verdict.retrain_margin is not None and metric is verdict.metric:
            margin = verdict.retrain_margin
            axis.plot(
                [1 + shift - 0.09, 1 + shift + 0.09],
                [floor.mean - margin.gap] * 2,
                color=colour,
                linewidth=3,
                solid_capstyle="butt",
            )
    axis.set_xticks(range(len(DATA_COLUMNS)), DATA_COLUMNS)
    axis.set_xlim(-0.3, len(DATA_COLUMNS) - 0.7)
    return handles


def _interval(axis: Axes, x: float, low: float | None, high: float | None, colour: str) -> None:
    if low is not None and high is not None:
        axis.plot([x, x], [low, high], color=colour, linewidth=1.5, alpha=0.6)


def _levels(axis: Axes, report: AuditReport, test: str, metric: Metric) -> None:
    """The mean random-mask and cross-image levels, below which a map carries no image structure."""
    for values, style in zip(_level_values(report, test, metric), (":", "--"), strict=True):
        level = as_values(values)
        if np.isfinite(level).any():
            axis.axhline(float(np.nanmean(level)), color="gray", linestyle=style, linewidth=1)


def _level_values(report: AuditReport, test: str, metric: Metric) -> tuple[list, list]:
    random_mask = [m.random_mask_calibration[metric].mean for m in report.methods]
    cross_image = [
        s.cross_image_floor[metric].mean for _, t in results_of(report, test) for s in t.stages[1:]
    ]
    return random_mask, cross_image


def _level_handles(report: AuditReport, test: str) -> list[Line2D]:
    """Legend entries for what every method shares: the levels, and the data test's floor and gap."""
    handles = [
        Line2D([], [], color="gray", linestyle=":", label="random mask"),
        Line2D([], [], color="gray", linestyle="--", label="different images"),
    ]
    if any(_plain_cascading(method, result) is not None for method, result in results_of(report, test)):
        handles.append(
            Line2D([], [], color="black", linestyle=PLAIN_STYLE, linewidth=1, label="plain cascading")
        )
    if test == "data" and any(r.retrain_floor is not None for _, r in results_of(report, test)):
        gap = report.settings.verdict.retrain_gap
        metric = report.settings.verdict.metric.value
        handles += [
            Line2D(
                [],
                [],
                color="black",
                linestyle="-.",
                linewidth=1,
                marker="D",
                markersize=4,
                label="retrain floor",
            ),
            Line2D([], [], color="black", linewidth=3, label=f"floor − {gap:g} ({metric})"),
        ]
    return handles


def or_nan(value: float | None) -> float:
    return np.nan if value is None else value


def as_values(values: object) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)  # type: ignore[union-attr]
