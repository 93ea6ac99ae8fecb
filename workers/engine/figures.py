"""Paper-style figures of a finished audit, drawn from its report and map archive.

Figures are a view of results already computed: they read ``report.json``'s numbers and ``maps.zip``'s
arrays, so the same code draws them in the CLI, in a worker and for an archive made earlier. Maps are shown
as the metrics see them (``similarity.normalize_absolute`` and ``normalize_signed``): the paper's
absolute-value visualization in gray, its diverging one in blue (negative) to red (positive).

Each figure is drawn for the width it is shown at, so the page never shrinks it: ``wide`` for a laptop's
page column, ``narrow`` for a phone. One point is one pixel (``DPI`` 72), so sizes below are the CSS pixels
of a page that shows the PNG at its natural size. Maps are upscaled by whole numbers with nearest-neighbour
interpolation: every map pixel stays a sharp square at least one screen pixel wide.
"""

import io
import json
import math
import textwrap
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display; set before anything draws

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.text import Text

from workers.core.audit_settings import LayerOrder, Metric, Outcome, StageUnit
from workers.core.report import (
    ENTROPY_MASK,
    ENTROPY_RANDOM,
    ENTROPY_TRAINED,
    AuditReport,
    MethodResult,
    Stage,
    TestResult,
)
from workers.engine.checks.data_randomization import CONTROL_MAPS
from workers.engine.checks.mprt import map_histograms
from workers.engine.similarity import normalize_absolute, normalize_signed

GRID_IMAGES = 3  # probe images per grid: a few, as in the paper's figures
MAX_GRID_IMAGES = 6  # a grid of few columns shows more of them rather than leave the page's width empty
DPI = 72  # one point is one pixel: font sizes and lengths below are pixels of the PNG
WIDE_PX = 1150  # the page's column on a 1280 px screen holds this at its natural size
NARROW_PX = 340  # a 360-390 px phone's column (less the page's margins) holds this at its natural size
FONT_PX = 11  # the smallest text of every figure
TITLE_PX = 12
MIN_CELL_PX = 32  # a grid puts fewer probe images side by side rather than show maps smaller than this
MAX_CELL_PX = 96  # nor larger than this, unless that is less than their own size: the page stays short
GAP_PX = 2  # between maps
BLOCK_GAP_PX = 14  # between the probe images of a band, and between bands
FRAME_GRAY = 0.74  # around each map, so white maps stay visible on the page
LABEL_WRAP = 12  # characters of a method's name per line, beside its row of maps
OUTCOME_COLOURS = {Outcome.passed: "#2e7d32", Outcome.failed: "#c62828", Outcome.inconclusive: "#b26a00"}
METRIC_TITLES = {
    Metric.spearman_abs: "Spearman rank correlation (absolute)",
    Metric.spearman_signed: "Spearman rank correlation (signed)",
    Metric.ssim: "SSIM",
    Metric.hog: "HOG similarity",
}
TEST_TITLES = {
    "cascading": "Cascading randomization",
    "independent": "Independent randomization",
    "data": "Data randomization",
    "input_invariance": "Input invariance",
    "random_logit": "Random logit",
    "smooth_mprt": "Smooth MPRT",
    "efficient_mprt": "Efficient MPRT",
}
DATA_COLUMNS = ["trained\nmodel", "random-label\ntwins", "true-label\ncontrols"]
# the later checks with one comparison per draw (docs/decisions/0023): a chart of the judged statistic
# against its limit instead of similarity curves, and grid columns named for what they compare
ONE_COMPARISON_TESTS = ("input_invariance", "random_logit", "efficient_mprt")
PASSES_ABOVE = ("efficient_mprt",)  # the judged statistic must rise above its limit
ENTROPY_COLOURS = {ENTROPY_TRAINED: "#1f77b4", ENTROPY_RANDOM: "#d62728"}
PLAIN_STYLE = (0, (5, 2, 1, 2))  # smooth MPRT's figure: the plain cascading curve of the same stages
GRID_COLUMNS = {
    "input_invariance": ["original\ninputs", "shifted\ninputs"],
    "random_logit": ["explained\nclass", "another\nclass"],
    "efficient_mprt": ["trained", "all layers\nrandom"],
}


@dataclass(frozen=True)
class Drawing:
    """One PNG of a figure, with what a page needs to show it no smaller than drawn: its natural size, its
    smallest text and, for map grids, how many of its pixels show one map pixel (all measured on the
    drawn figure)."""

    png: bytes
    width: int
    height: int
    font_px: float
    map_scale: float | None = None


@dataclass(frozen=True)
class FigureImage:
    name: str  # file name, e.g. "cascading-absolute.png"
    title: str
    caption: str
    test: str | None  # the test it shows; None for the verdict overview
    wide: Drawing
    narrow: Drawing | None = None  # for phones; None when the wide drawing is narrow enough

    @property
    def narrow_name(self) -> str:
        return self.name.removesuffix(".png") + "-narrow.png"

    def files(self) -> dict[str, bytes]:
        """The PNG files of this figure by name: the wide drawing, and the narrow one where there is one."""
        narrow = {self.narrow_name: self.narrow.png} if self.narrow is not None else {}
        return {self.name: self.wide.png} | narrow


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
        self._targets: dict[tuple[str, str | None, int], str] = {}
        self._controls: dict[str, list[str]] = {}
        self._has_targets = any(entry["path"] == "targets.npy" for entry in manifest["arrays"])
        for entry in manifest["arrays"]:
            if "method" not in entry:
                continue
            if entry["path"].endswith(f"/{CONTROL_MAPS}.npy"):  # the data test's true-label controls
                self._controls.setdefault(entry["method"], []).append(entry["path"])
            elif entry.get("draw", 0) == 0:
                key = (entry["method"], entry.get("test"), entry.get("stage", 0))
                self._paths.setdefault(key, entry["path"])
                if "targets" in entry:
                    self._targets.setdefault(key, entry["targets"])

    def inputs(self) -> np.ndarray:
        return self._load("inputs.npy")

    def maps(self, method: str, test: str, stage: int, every_image: bool = False) -> np.ndarray | None:
        """Stage 0 is the trained model's maps, shared by every test, unless the test archived its own
        reference (smooth MPRT's smoothed trained maps), which its stages are compared with.
        ``every_image``: all of the array's images, not only the first few."""
        path = self._paths.get((method, test, stage))
        if path is None and stage == 0:
            path = self._paths.get((method, None, 0))
        return None if path is None else self._load(path, every_image)

    def targets(self, method: str, test: str, stage: int) -> np.ndarray | None:
        """The class each of these maps explains: the trained model's unless the stage names its own
        (random logit's other classes); None for an archive written before the classes were kept."""
        path = self._targets.get((method, test, stage), "targets.npy" if self._has_targets else None)
        return None if path is None else self._load(path)

    def controls(self, method: str) -> list[np.ndarray]:
        return [self._load(path) for path in self._controls.get(method, [])]

    def _load(self, path: str, every_image: bool = False) -> np.ndarray:
        key = f"{path}:all" if every_image else path
        if key not in self._loaded:
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
                if not every_image:
                    shape = (min(shape[0], self._images), *shape[1:])
                data = member.read(math.prod(shape) * dtype.itemsize)
            self._loaded[key] = np.frombuffer(bytearray(data), dtype=dtype).reshape(shape)
        return self._loaded[key]

    def close(self) -> None:
        self._zip.close()


def render_figures(report: AuditReport, archive: Path) -> list[FigureImage]:
    """Every figure the report's results allow, in reading order: verdicts, then each test's curves and
    maps."""
    reader = MapReader(archive, MAX_GRID_IMAGES)
    try:
        figures = [_verdict_figure(report)]
        for test in _tests(report):
            if test in ONE_COMPARISON_TESTS:
                figures += [_judged_figure(report, test)] if _judged(report, test) else []
            else:
                figures.append(_curves_figure(report, test))
            if test == "efficient_mprt":
                figures.append(_entropy_figure(report, reader, test))
            for signed in (False, True):
                grid = _grid_figure(report, reader, test, signed)
                if grid is not None:
                    figures.append(grid)
        return figures
    finally:
        reader.close()


def _drawing(figure: Figure, map_scale: float | None = None) -> Drawing:
    """The PNG of ``figure`` at its own size (no tight crop: the layouts below place every pixel), with
    its smallest text measured on the drawn figure."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    texts = [t for t in figure.findobj(Text) if t.get_text() and t.get_visible()]
    font_px = min(t.get_fontsize() for t in texts) * DPI / 72 if texts else float(FONT_PX)
    width, height = (round(side * DPI) for side in figure.get_size_inches())
    return Drawing(buffer.getvalue(), width, height, font_px, map_scale)


def _new_figure(width: float, height: float, **options: object) -> Figure:
    return Figure(figsize=(width / DPI, height / DPI), dpi=DPI, **options)  # type: ignore[arg-type]


def _tests(report: AuditReport) -> list[str]:
    return list(dict.fromkeys(t.test.value for m in report.methods for t in m.tests))


def _test_of(method: MethodResult, test: str) -> TestResult | None:
    return next((t for t in method.tests if t.test.value == test), None)


def _method_label(method: MethodResult, wrap: bool = False) -> str:
    name = method.name.replace("_", " ")
    return textwrap.fill(name, LABEL_WRAP, break_long_words=False) if wrap else name


def _short_label(stage: Stage) -> str:
    if stage.index == 0:
        return "trained, smoothed" if stage.label.endswith("smoothed") else "trained"
    label = stage.label.replace(" and above", "+").replace(" and below", "+")  # "+": and those walked before
    label = label.replace(" only", "").replace("random-label twins", "twin")
    return label if len(label) <= 18 else "…" + label[-17:]  # deep models' names: their distinctive end


# --- map grids -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MapGrid:
    """What a grid shows: per probe image its input, then per method a row of maps, one per column."""

    inputs: np.ndarray  # [N, C, H, W] as the model saw them
    rows: list[tuple[str, list[np.ndarray | None]]]  # method label -> its maps per column, [N, C, H, W]
    columns: list[str]
    signed: bool
    captions: list[str] | None = None  # beside each probe image; "probe k" where None


@dataclass(frozen=True)
class GridLayout:
    """``per_band`` probe images side by side in each band of the grid, each map ``scale`` times its size."""

    per_band: int
    scale: float


def grid_layout(images: int, columns: int, map_width: int, width: int) -> GridLayout:
    """The most probe images side by side whose maps, upscaled by a whole number, still show at least at
    their own size and at least ``MIN_CELL_PX`` (at most ``MAX_CELL_PX``): a grid uses the width it is
    given, and stays short. Where one image a band cannot show them that large, they keep their own size
    if it fits, or are shrunk to fit (a deep model's many stages on a phone)."""
    for per_band in range(images, 0, -1):
        usable = width - (per_band - 1) * BLOCK_GAP_PX - per_band * (columns - 1) * GAP_PX
        scale = min(usable // (per_band * columns * map_width), max(1, MAX_CELL_PX // map_width))
        if scale >= 1 and scale * map_width >= MIN_CELL_PX:
            return GridLayout(per_band, scale)
    fit = (width - (columns - 1) * GAP_PX) / (columns * map_width)
    return GridLayout(1, math.floor(fit) if fit >= 1 else fit)


def _class_captions(reader: MapReader, method: str, test: str, images: int) -> list[str] | None:
    """Random logit: each probe's explained class against the other class its second column explains
    (the same classes for every method)."""
    if test != "random_logit":
        return None
    explained, other = reader.targets(method, test, 0), reader.targets(method, test, 1)
    if explained is None or other is None:
        return None
    return [f"probe {k}:\nclass {explained[k]} vs {other[k]}" for k in range(images)]


def _grid_figure(report: AuditReport, reader: MapReader, test: str, signed: bool) -> FigureImage | None:
    """Columns: the trained model, then each stage (the data test: the first random-label twin, then each
    archived true-label control; the archive keeps the first draw's maps unless ``archive_all_draws``);
    rows: methods, under each probe image."""
    methods = [m for m in report.methods if _test_of(m, test) is not None]
    if not methods or len(reader.inputs()) == 0:
        return None
    stages = _test_of(methods[0], test).stages  # type: ignore[union-attr]
    maps = {
        method.name: [reader.maps(method.name, test, stage.index) for stage in stages]
        + (reader.controls(method.name) if test == "data" else [])
        for method in methods
    }
    columns = GRID_COLUMNS.get(test) or [_short_label(stage) for stage in stages]
    columns += [f"control {k + 1}" for k in range(max(len(m) for m in maps.values()) - len(columns))]
    shown = max(GRID_IMAGES, min(MAX_GRID_IMAGES, WIDE_PX // (len(columns) * MAX_CELL_PX)))
    inputs = reader.inputs()[:shown]
    rows = [(_method_label(m, wrap=True), maps[m.name]) for m in methods]
    grid = MapGrid(inputs, rows, columns, signed, _class_captions(reader, methods[0].name, test, len(inputs)))
    kind = "diverging" if signed else "absolute"
    wide = _draw_grid(grid, WIDE_PX)
    what = (
        "blue negative, red positive, white zero" if signed else "absolute value, black zero, white largest"
    )
    return FigureImage(
        name=f"{test}-{kind}.png",
        title=f"{TEST_TITLES[test]}: maps, {kind}",
        caption=f"The first {len(inputs)} probe images, each above its maps: one row per method, one column "
        f"per {'model' if test == 'data' else 'stage'}; {what}, normalized as the metrics see them.",
        test=test,
        wide=wide,
        narrow=_draw_grid(grid, NARROW_PX) if wide.width > NARROW_PX else None,
    )


@dataclass(frozen=True)
class GridGeometry:
    """Where a grid's pieces go, in pixels from the top left: method names in a column ``label_width``
    wide, then bands of ``per_band`` probe blocks; in a block the input's row, the column headers
    (``header`` high, turned upright when wider than a map), and a row of maps per method."""

    label_width: int
    cell_h: int
    cell_w: int
    header: int
    rotate: bool
    per_band: int
    columns: int
    rows: int

    @property
    def block_w(self) -> int:
        return self.columns * self.cell_w + (self.columns - 1) * GAP_PX

    @property
    def band_h(self) -> int:
        return self.cell_h + self.header + self.rows * (self.cell_h + GAP_PX) - GAP_PX

    def origin(self, image: int) -> tuple[int, int]:
        """Top left of a probe image's block (1 px in, for the frames around its maps)."""
        band, slot = divmod(image, self.per_band)
        left = self.label_width + slot * (self.block_w + BLOCK_GAP_PX)
        return left, 1 + band * (self.band_h + BLOCK_GAP_PX)

    def size(self, images: int) -> tuple[int, int]:
        bands = math.ceil(images / self.per_band)
        width = self.label_width + self.per_band * self.block_w + (self.per_band - 1) * BLOCK_GAP_PX + 1
        return width, bands * self.band_h + (bands - 1) * BLOCK_GAP_PX + 2


def _grid_geometry(grid: MapGrid, width: int) -> GridGeometry:
    renderer = FigureCanvasAgg(Figure(dpi=DPI)).get_renderer()

    def measure(text: str) -> float:
        font = FontProperties(size=FONT_PX)
        return max(renderer.get_text_width_height_descent(line, font, False)[0] for line in text.split("\n"))

    label_width = (
        math.ceil(max(measure(label) for label in ["input", *(label for label, _ in grid.rows)])) + 8
    )
    height, map_width = grid.inputs.shape[-2:]
    layout = grid_layout(len(grid.inputs), len(grid.columns), map_width, width - label_width)
    cell_h, cell_w = round(layout.scale * height), round(layout.scale * map_width)
    header_text = max(measure(label) for label in grid.columns)
    rotate = header_text > cell_w + GAP_PX - 2
    lines = max(label.count("\n") + 1 for label in grid.columns)
    header = math.ceil(header_text) + 6 if rotate else lines * (FONT_PX + 3) + 5
    return GridGeometry(
        label_width, cell_h, cell_w, header, rotate, layout.per_band, len(grid.columns), len(grid.rows)
    )


def _draw_grid(grid: MapGrid, width: int) -> Drawing:
    """The maps are pasted into one pixel array, each resampled by nearest neighbour to its cell, and
    shown unscaled (``figimage``): exact pixels, and one image to draw instead of an axes per map."""
    geometry = _grid_geometry(grid, width)
    total_w, total_h = geometry.size(len(grid.inputs))
    pixels = np.ones((total_h, total_w, 3))
    figure = _new_figure(total_w, total_h)
    for image in range(len(grid.inputs)):
        _draw_block(figure, pixels, grid, geometry, image)
    figure.figimage(pixels, origin="upper")
    return _drawing(figure, geometry.cell_w / grid.inputs.shape[-1])


def _draw_block(
    figure: Figure, pixels: np.ndarray, grid: MapGrid, geometry: GridGeometry, image: int
) -> None:
    """One probe image's block; the first of its band also names the rows."""
    left, top = geometry.origin(image)
    labelled = left == geometry.label_width
    width, height = pixels.shape[1], pixels.shape[0]

    def text(x: float, y: float, label: str, **options: object) -> None:
        figure.text(x / width, 1 - y / height, label, fontsize=FONT_PX, **options)  # type: ignore[arg-type]

    _paste(pixels, _displayable(grid.inputs[image]), left, top, geometry)
    caption = grid.captions[image] if grid.captions else f"probe {image}"
    text(left + geometry.cell_w + 6, top + geometry.cell_h / 2, caption, va="center")
    if labelled:
        text(left - 8, top + geometry.cell_h / 2, "input", ha="right", va="center")
    maps_top = top + geometry.cell_h + geometry.header
    for column, label in enumerate(grid.columns):
        x = left + column * (geometry.cell_w + GAP_PX) + geometry.cell_w / 2
        text(x, maps_top - 4, label, ha="center", va="bottom", rotation=90 if geometry.rotate else 0)
    for row, (label, method_maps) in enumerate(grid.rows):
        y = maps_top + row * (geometry.cell_h + GAP_PX)
        if labelled:
            text(left - 8, y + geometry.cell_h / 2, label, ha="right", va="center")
        for column, maps in enumerate(method_maps):
            if maps is not None and image < len(maps):
                shown = _coloured(maps[image : image + 1], grid.signed)
                _paste(pixels, shown, left + column * (geometry.cell_w + GAP_PX), y, geometry)


def _paste(pixels: np.ndarray, image: np.ndarray, left: int, top: int, geometry: GridGeometry) -> None:
    """``image`` ([H, W] gray or [H, W, 3] RGB in [0, 1]) resampled to a cell by nearest neighbour (a whole
    number of times its size: each pixel a square), framed in light gray just outside the cell."""
    h, w = geometry.cell_h, geometry.cell_w
    rows = ((np.arange(h) + 0.5) * image.shape[0] / h).astype(int)
    columns = ((np.arange(w) + 0.5) * image.shape[1] / w).astype(int)
    resampled = image[rows][:, columns]
    pixels[top - 1 : top + h + 1, left - 1 : left + w + 1] = FRAME_GRAY
    pixels[top : top + h, left : left + w] = resampled[..., None] if resampled.ndim == 2 else resampled


def _coloured(maps: np.ndarray, signed: bool) -> np.ndarray:
    """One map ([1, C, H, W]) as the metrics see it, as RGB: gray for absolute values, blue-white-red
    for signed ones."""
    if signed:
        return colormaps["bwr"]((normalize_signed(maps)[0].numpy() + 1) / 2)[..., :3]
    return colormaps["gray"](normalize_absolute(maps)[0].numpy())[..., :3]


def _displayable(image: np.ndarray) -> np.ndarray:
    """A [C, H, W] model input scaled to [0, 1] for display: gray for one channel, RGB for three."""
    span = float(image.max() - image.min())
    scaled = (image - image.min()) / span if span > 0 else np.zeros_like(image)
    return scaled[0] if scaled.shape[0] != 3 else np.transpose(scaled, (1, 2, 0))


# --- similarity curves -----------------------------------------------------------------------------------


def _curves_figure(report: AuditReport, test: str) -> FigureImage:
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
        figure = _new_figure(NARROW_PX, 190 * len(metrics) + 200, layout="constrained")
        axes = figure.subplots(len(metrics), 1, sharex=True, squeeze=False)[:, 0]
    else:
        figure = _new_figure(WIDE_PX, 390, layout="constrained")
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
    return _drawing(figure)


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


def _results(report: AuditReport, test: str) -> Iterator[tuple[MethodResult, TestResult]]:
    for method in report.methods:
        result = _test_of(method, test)
        if result is not None:
            yield method, result


def _parameter_panel(axis: Axes, report: AuditReport, test: str, metric: Metric) -> list[Line2D]:
    """Each method's mean similarity per stage with its 95% band."""
    handles, labels = [], []
    for method, result in _results(report, test):
        labels = [_short_label(stage) for stage in result.stages]
        summaries = [stage.similarity[metric] for stage in result.stages]
        x = np.arange(len(summaries))
        mean = _values(s.mean for s in summaries)
        line = axis.plot(x, mean, marker="o", markersize=3, label=_method_label(method))[0]
        low, high = _values(s.ci95_low for s in summaries), _values(s.ci95_high for s in summaries)
        axis.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        plain = _plain_cascading(method, result)
        if plain is not None:
            means = _values(stage.similarity[metric].mean for stage in plain.stages)
            axis.plot(x, means, color=line.get_color(), linestyle=PLAIN_STYLE, linewidth=1, alpha=0.8)
        handles.append(line)
    shown = max(1, math.ceil(len(labels) / 16))  # a deep model's stages: every k-th name
    ticks = list(range(0, len(labels), shown))
    axis.set_xticks(ticks, [labels[i] for i in ticks], rotation=55, ha="right", rotation_mode="anchor")
    return handles


def _plain_cascading(method: MethodResult, result: TestResult) -> TestResult | None:
    """Smooth MPRT beside the plain cascading test of the same method, where that walked the same
    stages (the same order): how much of the plain curve's fall was the method's own noise."""
    plain = _test_of(method, "cascading") if result.test.value == "smooth_mprt" else None
    if plain is None or [s.label for s in plain.stages[1:]] != [s.label for s in result.stages[1:]]:
        return None
    return plain


def _data_panel(axis: Axes, report: AuditReport, test: str, metric: Metric) -> list[Line2D]:
    """Per method: the trained model (1), its twins (mean, 95% interval) and the retrain floor, the
    similarity of true-label models (mean, interval), drawn back as a line to the twins' column; for the
    judged metric a bar at the floor less the gap, the level the twins must lie below."""
    handles = []
    results = list(_results(report, test))
    for k, (method, result) in enumerate(results):
        shift = (k - (len(results) - 1) / 2) * 0.03  # side by side, so the intervals stay apart
        twins = result.stages[-1].similarity[metric]
        line = axis.plot(
            [0, 1 + shift], [1, _or_nan(twins.mean)], marker="o", markersize=4, label=_method_label(method)
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
        level = _values(values)
        if np.isfinite(level).any():
            axis.axhline(float(np.nanmean(level)), color="gray", linestyle=style, linewidth=1)


def _level_values(report: AuditReport, test: str, metric: Metric) -> tuple[list, list]:
    random_mask = [m.random_mask_calibration[metric].mean for m in report.methods]
    cross_image = [s.cross_image_floor[metric].mean for _, t in _results(report, test) for s in t.stages[1:]]
    return random_mask, cross_image


def _level_handles(report: AuditReport, test: str) -> list[Line2D]:
    """Legend entries for what every method shares: the levels, and the data test's floor and gap."""
    handles = [
        Line2D([], [], color="gray", linestyle=":", label="random mask"),
        Line2D([], [], color="gray", linestyle="--", label="different images"),
    ]
    if any(_plain_cascading(method, result) is not None for method, result in _results(report, test)):
        handles.append(
            Line2D([], [], color="black", linestyle=PLAIN_STYLE, linewidth=1, label="plain cascading")
        )
    if test == "data" and any(r.retrain_floor is not None for _, r in _results(report, test)):
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


def _or_nan(value: float | None) -> float:
    return np.nan if value is None else value


def _values(values: object) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)  # type: ignore[union-attr]


# --- one comparison per draw: the judged statistic, entropy histograms -----------------------------------


def _judged_figure(report: AuditReport, test: str) -> FigureImage:
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


def _judged(report: AuditReport, test: str) -> list[tuple[MethodResult, TestResult]]:
    """The methods with a verdict on ``test`` (baselines have none)."""
    return [(m, r) for m, r in _results(report, test) if r.verdict is not None]


def _draw_judged(report: AuditReport, test: str, width: int) -> Drawing:
    """One row per judged method: the estimate and its interval against the verdict's limit, on a
    symmetric log axis for input invariance, whose differences span orders of magnitude (an invariant
    method's is rounding, 1e-7)."""
    results = _judged(report, test)
    figure = _new_figure(width, 130 + 30 * len(results), layout="constrained")
    axis = figure.subplots()
    limit = results[0][1].verdict.limit  # type: ignore[union-attr]
    lowest = np.nanmin(
        [
            _or_nan(v)
            for _, r in results
            for v in (r.verdict.estimate.ci95_low, *r.verdict.estimate.draw_means)
        ]  # type: ignore[union-attr]
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
        draws = _values(estimate.draw_means)
        axis.plot(draws, np.full(len(draws), row), "o", markerfacecolor="none", color=colour, markersize=6)
        axis.plot([_or_nan(estimate.mean)], [row], "o", color=colour, markersize=6)
        if test == "random_logit" and verdict.metric is not None:
            mask = method.random_mask_calibration[verdict.metric].mean
            cross = result.stages[-1].cross_image_floor[verdict.metric].mean
            axis.plot([_or_nan(mask)], [row], marker="|", color="gray", markersize=14, linestyle="none")
            axis.plot([_or_nan(cross)], [row], marker="x", color="gray", markersize=7, linestyle="none")
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
    axis.set_yticks(range(len(results)), [_method_label(m) for m, _ in results])
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
    return _drawing(figure)


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


def _entropy_figure(report: AuditReport, reader: MapReader, test: str) -> FigureImage:
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
    results = list(_results(report, test))
    bins = report.settings.efficient_mprt_bins
    if narrow:
        figure = _new_figure(NARROW_PX, 170 * len(results) + 110, layout="constrained")
        axes = figure.subplots(len(results), 1, sharex=True, squeeze=False)[:, 0]
    else:
        columns = min(len(results), 4)
        rows = math.ceil(len(results) / columns)
        figure = _new_figure(WIDE_PX, 230 * rows + 90, layout="constrained")
        axes = figure.subplots(rows, columns, sharex=True, squeeze=False).ravel()
        for unused in axes[len(results) :]:
            unused.set_visible(False)
    centres = (np.arange(bins) + 0.5) / bins
    for axis, (method, result) in zip(axes, results, strict=False):
        measures = result.stages[-1].measures
        entropy = {
            name: _or_nan(measures[name].mean) if name in measures else np.nan
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
        axis.set_title(f"{_method_label(method)} (mask H {entropy[ENTROPY_MASK]:.2f})", fontsize=TITLE_PX)
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
    return _drawing(figure)


# --- verdict overview ------------------------------------------------------------------------------------


def _verdict_figure(report: AuditReport) -> FigureImage:
    """Methods x tests, each cell coloured by its outcome and naming it: a picture to share (the page
    shows the same as a table)."""
    tests = _tests(report)
    judged = [m for m in report.methods if not m.baseline]
    cell_w, cell_h, label_w, header = 96, 26, 130, 22
    width, height = label_w + cell_w * len(tests), header + cell_h * len(judged)
    figure = _new_figure(width, height)
    axis = figure.add_axes((label_w / width, 0, 1 - label_w / width, 1 - header / height))
    for row, method in enumerate(judged):
        for column, test in enumerate(tests):
            result = _test_of(method, test)
            outcome = result.verdict.outcome if result is not None and result.verdict else None
            colour = OUTCOME_COLOURS.get(outcome, "#e0e0e0")  # type: ignore[arg-type]
            axis.add_patch(Rectangle((column, row), 0.96, 0.9, color=colour))
            text = outcome.value if outcome else "not run"
            axis.text(
                column + 0.48, row + 0.45, text, ha="center", va="center", color="white", fontsize=FONT_PX
            )
    axis.set_xlim(0, len(tests))
    axis.set_ylim(len(judged), 0)
    axis.xaxis.tick_top()
    axis.set_xticks([c + 0.48 for c in range(len(tests))], tests, fontsize=FONT_PX)
    axis.set_yticks(
        [r + 0.45 for r in range(len(judged))], [_method_label(m) for m in judged], fontsize=FONT_PX
    )
    axis.tick_params(length=0)
    for spine in axis.spines.values():
        spine.set_visible(False)
    return FigureImage("verdicts.png", "Verdicts", "Outcome of each method and test.", None, _drawing(figure))
