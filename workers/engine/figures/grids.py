"""Map grids: a few probe images' maps at each stage of a test, absolute and signed."""

import math
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties

from workers.core.report import AuditReport
from workers.engine.figures.common import (
    BLOCK_GAP_PX,
    DPI,
    FONT_PX,
    FRAME_GRAY,
    GAP_PX,
    GRID_COLUMNS,
    GRID_IMAGES,
    MAX_CELL_PX,
    MAX_GRID_IMAGES,
    MIN_CELL_PX,
    NARROW_PX,
    TEST_TITLES,
    WIDE_PX,
    Drawing,
    FigureImage,
    MapReader,
    drawing,
    method_label,
    new_figure,
    result_of,
    short_label,
)
from workers.engine.similarity import normalize_absolute, normalize_signed


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


def grid_figure(report: AuditReport, reader: MapReader, test: str, signed: bool) -> FigureImage | None:
    """Columns: the trained model, then each stage (the data test: the first random-label twin, then each
    archived true-label control; the archive keeps the first draw's maps unless ``archive_all_draws``);
    rows: methods, under each probe image."""
    methods = [m for m in report.methods if result_of(m, test) is not None]
    if not methods or len(reader.inputs()) == 0:
        return None
    stages = result_of(methods[0], test).stages  # type: ignore[union-attr]
    maps = {
        method.name: [reader.maps(method.name, test, stage.index) for stage in stages]
        + (reader.controls(method.name) if test == "data" else [])
        for method in methods
    }
    columns = GRID_COLUMNS.get(test) or [short_label(stage) for stage in stages]
    columns += [f"control {k + 1}" for k in range(max(len(m) for m in maps.values()) - len(columns))]
    shown = max(GRID_IMAGES, min(MAX_GRID_IMAGES, WIDE_PX // (len(columns) * MAX_CELL_PX)))
    inputs = reader.inputs()[:shown]
    rows = [(method_label(m, wrap=True), maps[m.name]) for m in methods]
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
    figure = new_figure(total_w, total_h)
    for image in range(len(grid.inputs)):
        _draw_block(figure, pixels, grid, geometry, image)
    figure.figimage(pixels, origin="upper")
    return drawing(figure, geometry.cell_w / grid.inputs.shape[-1])


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
