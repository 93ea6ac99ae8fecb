"""What every figure shares: sizes, colours and titles, the PNG drawings a page shows, and the reader of
the map archive."""

import io
import json
import math
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.text import Text

from workers.core.audit_settings import Metric, Outcome
from workers.core.report import (
    ENTROPY_RANDOM,
    ENTROPY_TRAINED,
    AuditReport,
    MethodResult,
    Stage,
    TestResult,
)
from workers.engine.checks.data_randomization import CONTROL_MAPS

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


def drawing(figure: Figure, map_scale: float | None = None) -> Drawing:
    """The PNG of ``figure`` at its own size (no tight crop: the layouts below place every pixel), with
    its smallest text measured on the drawn figure."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    texts = [t for t in figure.findobj(Text) if t.get_text() and t.get_visible()]
    font_px = min(t.get_fontsize() for t in texts) * DPI / 72 if texts else float(FONT_PX)
    width, height = (round(side * DPI) for side in figure.get_size_inches())
    return Drawing(buffer.getvalue(), width, height, font_px, map_scale)


def new_figure(width: float, height: float, **options: object) -> Figure:
    return Figure(figsize=(width / DPI, height / DPI), dpi=DPI, **options)  # type: ignore[arg-type]


def report_tests(report: AuditReport) -> list[str]:
    return list(dict.fromkeys(t.test.value for m in report.methods for t in m.tests))


def result_of(method: MethodResult, test: str) -> TestResult | None:
    return next((t for t in method.tests if t.test.value == test), None)


def method_label(method: MethodResult, wrap: bool = False) -> str:
    name = method.name.replace("_", " ")
    return textwrap.fill(name, LABEL_WRAP, break_long_words=False) if wrap else name


def short_label(stage: Stage) -> str:
    if stage.index == 0:
        return "trained, smoothed" if stage.label.endswith("smoothed") else "trained"
    label = stage.label.replace(" and above", "+").replace(" and below", "+")  # "+": and those walked before
    label = label.replace(" only", "").replace("random-label twins", "twin")
    return label if len(label) <= 18 else "…" + label[-17:]  # deep models' names: their distinctive end
