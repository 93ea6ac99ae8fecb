"""Paper-style figures of a finished audit, drawn from its report and map archive.

Figures are a view of results already computed: they read ``report.json``'s numbers and ``maps.zip``'s
arrays, so the same code draws them in the CLI, in a worker and for an archive made earlier. Maps are shown
as the metrics see them (``similarity.normalize_absolute`` and ``normalize_signed``): the paper's
absolute-value visualization in gray, its diverging one in blue (negative) to red (positive).
"""

import io
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display; set before pyplot is imported

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from workers.engine.checks.data import CONTROL_MAPS
from workers.engine.report import AuditReport, MethodResult, Stage, TestResult
from workers.engine.settings import Metric, Outcome
from workers.engine.similarity import normalize_absolute, normalize_signed

GRID_IMAGES = 3  # probe images per grid: a few, as in the paper's figures
DPI = 96
OUTCOME_COLOURS = {Outcome.passed: "#2e7d32", Outcome.failed: "#c62828", Outcome.inconclusive: "#b26a00"}
METRIC_TITLES = {
    Metric.spearman_abs: "Spearman rank correlation (absolute)",
    Metric.spearman_signed: "Spearman rank correlation (signed)",
    Metric.ssim: "SSIM",
    Metric.hog: "HOG similarity",
}


@dataclass(frozen=True)
class FigureImage:
    name: str  # file name, e.g. "cascading-absolute.png"
    title: str
    png: bytes


class MapReader:
    """The first images of ``maps.zip``'s arrays by method, test and stage (draw 0), through its manifest.

    A figure shows a few probe images: only the leading rows of each array are decompressed (the archive
    stores C-order .npy), each array once for all the figures that show it.
    """

    def __init__(self, archive: Path, images: int) -> None:
        self._zip = zipfile.ZipFile(archive)
        self._images = images
        self._loaded: dict[str, np.ndarray] = {}
        manifest = json.loads(self._zip.read("manifest.json"))
        self._paths: dict[tuple[str, str | None, int], str] = {}
        self._controls: dict[str, list[str]] = {}
        for entry in manifest["arrays"]:
            if "method" not in entry:
                continue
            if entry["path"].endswith(f"/{CONTROL_MAPS}.npy"):  # the data test's true-label controls
                self._controls.setdefault(entry["method"], []).append(entry["path"])
            elif entry.get("draw", 0) == 0:
                key = (entry["method"], entry.get("test"), entry.get("stage", 0))
                self._paths.setdefault(key, entry["path"])

    def inputs(self) -> np.ndarray:
        return self._load("inputs.npy")

    def maps(self, method: str, test: str, stage: int) -> np.ndarray | None:
        """Stage 0 is the trained model's maps, shared by every test."""
        path = self._paths.get((method, None, 0) if stage == 0 else (method, test, stage))
        return None if path is None else self._load(path)

    def controls(self, method: str) -> list[np.ndarray]:
        return [self._load(path) for path in self._controls.get(method, [])]

    def _load(self, path: str) -> np.ndarray:
        if path not in self._loaded:
            with self._zip.open(path) as member:
                version = np.lib.format.read_magic(member)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, fortran_order, dtype = read_header(member)
                if fortran_order or dtype.hasobject:
                    raise ValueError(f"{path}: not a C-order numeric array")
                shape = (min(shape[0], self._images), *shape[1:])
                data = member.read(math.prod(shape) * dtype.itemsize)
            self._loaded[path] = np.frombuffer(bytearray(data), dtype=dtype).reshape(shape)
        return self._loaded[path]

    def close(self) -> None:
        self._zip.close()


def render_figures(report: AuditReport, archive: Path, images: int = GRID_IMAGES) -> list[FigureImage]:
    """Every figure the report's results allow, in reading order: verdicts, then each test's maps and
    curves."""
    reader = MapReader(archive, images)
    try:
        figures = [_figure("verdicts.png", "Verdicts", _verdict_figure(report))]
        for test in _tests(report):
            for signed in (False, True):
                kind = "diverging" if signed else "absolute"
                grid = _grid_figure(report, reader, test, signed)
                if grid is not None:
                    figures.append(_figure(f"{test}-{kind}.png", f"{_test_title(test)}: maps, {kind}", grid))
            figures.append(
                _figure(f"{test}-similarity.png", f"{_test_title(test)}: similarity", _curves(report, test))
            )
        return figures
    finally:
        reader.close()


def _figure(name: str, title: str, figure: Figure) -> FigureImage:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return FigureImage(name, title, buffer.getvalue())


def _tests(report: AuditReport) -> list[str]:
    return list(dict.fromkeys(t.test.value for m in report.methods for t in m.tests))


def _test_title(test: str) -> str:
    return {"cascading": "Cascading randomization", "independent": "Independent randomization"}.get(
        test, "Data randomization"
    )


def _test_of(method: MethodResult, test: str) -> TestResult | None:
    return next((t for t in method.tests if t.test.value == test), None)


def _grid_figure(report: AuditReport, reader: MapReader, test: str, signed: bool) -> Figure | None:
    """Rows: each of the first probe images, then its maps by method; columns: the input, the trained
    model, then each stage (the data test: the first random-label twin, then each archived true-label
    control; the archive keeps the first draw's maps unless ``archive_all_draws``)."""
    methods = [m for m in report.methods if _test_of(m, test) is not None]
    inputs = reader.inputs()
    if not methods or len(inputs) == 0:
        return None
    stages = _test_of(methods[0], test).stages  # type: ignore[union-attr]
    labels = [_short_label(stage) for stage in stages]
    maps = {
        method.name: [reader.maps(method.name, test, stage.index) for stage in stages]
        + (reader.controls(method.name) if test == "data" else [])
        for method in methods
    }
    labels += [f"control {k + 1}" for k in range(max(len(m) for m in maps.values()) - len(labels))]
    rows, columns = len(inputs) * len(methods), len(labels) + 1
    figure, axes = plt.subplots(rows, columns, figsize=(1.3 * columns, 1.3 * rows), squeeze=False)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    for image in range(len(inputs)):
        for m, method in enumerate(methods):
            row = image * len(methods) + m
            if m == 0:
                axes[row, 0].imshow(_displayable(inputs[image]), cmap="gray")
                axes[row, 0].set_title(f"probe {image}", fontsize=7)
            else:
                axes[row, 0].axis("off")
            axes[row, 1].set_ylabel(method.name.replace("_", " "), fontsize=7)
            method_maps = maps[method.name]
            for column, label in enumerate(labels, start=1):
                shown = method_maps[column - 1] if column <= len(method_maps) else None
                _draw_map(axes[row, column], shown, image, signed)
                if row == 0:
                    axes[row, column].set_title(label, fontsize=7)
    figure.subplots_adjust(wspace=0.05, hspace=0.15)
    return figure


def _draw_map(axis: plt.Axes, maps: np.ndarray | None, image: int, signed: bool) -> None:
    if maps is None or image >= len(maps):
        axis.axis("off")
        return
    single = maps[image : image + 1]
    if signed:
        axis.imshow(normalize_signed(single)[0].numpy(), cmap="bwr", vmin=-1, vmax=1)
    else:
        axis.imshow(normalize_absolute(single)[0].numpy(), cmap="gray", vmin=0, vmax=1)


def _displayable(image: np.ndarray) -> np.ndarray:
    """A [C, H, W] model input scaled to [0, 1] for display: gray for one channel, RGB for three."""
    span = float(image.max() - image.min())
    scaled = (image - image.min()) / span if span > 0 else np.zeros_like(image)
    return scaled[0] if scaled.shape[0] != 3 else np.transpose(scaled, (1, 2, 0))


def _short_label(stage: Stage) -> str:
    if stage.index == 0:
        return "trained"
    return stage.label.replace(" and above", "+").replace("random-label twins", "twin")


def _curves(report: AuditReport, test: str) -> Figure:
    """One panel per metric: each method's similarity to its trained maps per stage, with its 95% band;
    dashed, the mean random-mask and cross-image levels, below which a map carries no image structure."""
    metrics = list(Metric)
    figure, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    for axis, metric in zip(axes[0], metrics, strict=True):
        labels: list[str] = []
        for method in report.methods:
            result = _test_of(method, test)
            if result is None:
                continue
            labels = [_short_label(stage) for stage in result.stages]
            summaries = [stage.similarity[metric] for stage in result.stages]
            x = np.arange(len(summaries))
            mean = _values(s.mean for s in summaries)
            line = axis.plot(x, mean, marker="o", markersize=3, label=method.name.replace("_", " "))[0]
            low, high = _values(s.ci95_low for s in summaries), _values(s.ci95_high for s in summaries)
            axis.fill_between(x, low, high, color=line.get_color(), alpha=0.2)
        levels = [
            ("random mask", [m.random_mask_calibration[metric].mean for m in report.methods]),
            (
                "cross-image",
                [
                    s.cross_image_floor[metric].mean
                    for m in report.methods
                    for t in m.tests
                    if t.test.value == test
                    for s in t.stages[1:]
                ],
            ),
        ]
        for (name, values), style in zip(levels, (":", "--"), strict=True):
            level = _values(values)
            if np.isfinite(level).any():
                axis.axhline(float(np.nanmean(level)), color="gray", linestyle=style, linewidth=1, label=name)
        axis.set_title(METRIC_TITLES[metric], fontsize=9)
        axis.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
        axis.set_ylim(-1.05 if metric is not Metric.ssim else -0.05, 1.05)
        axis.set_xlabel("layers randomized", fontsize=8)
    axes[0, 0].set_ylabel("similarity to the trained maps", fontsize=8)
    axes[0, -1].legend(fontsize=7, loc="lower left")
    return figure


def _values(values: object) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)  # type: ignore[union-attr]


def _verdict_figure(report: AuditReport) -> Figure:
    """Methods x tests, each cell coloured by its outcome and naming it."""
    tests = _tests(report)
    judged = [m for m in report.methods if not m.baseline]
    figure, axis = plt.subplots(figsize=(1.8 + 1.7 * len(tests), 0.6 + 0.45 * len(judged)))
    for row, method in enumerate(judged):
        for column, test in enumerate(tests):
            result = _test_of(method, test)
            outcome = result.verdict.outcome if result is not None and result.verdict else None
            colour = OUTCOME_COLOURS.get(outcome, "#e0e0e0")  # type: ignore[arg-type]
            axis.add_patch(plt.Rectangle((column, row), 0.96, 0.9, color=colour))
            text = outcome.value if outcome else "not run"
            axis.text(column + 0.48, row + 0.45, text, ha="center", va="center", color="white", fontsize=9)
    axis.set_xlim(0, len(tests))
    axis.set_ylim(len(judged), 0)
    axis.set_xticks([c + 0.48 for c in range(len(tests))], tests, fontsize=8)
    axis.set_yticks(
        [r + 0.45 for r in range(len(judged))], [m.name.replace("_", " ") for m in judged], fontsize=8
    )
    axis.tick_params(length=0)
    for spine in axis.spines.values():
        spine.set_visible(False)
    return figure
