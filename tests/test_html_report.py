"""The HTML report of a real audit: self-contained, every figure drawn, the verdicts the report holds;
rendered in headless Chromium on a laptop and on a phone, where it must read without zooming or sideways
scrolling."""

import base64
import dataclasses
import io
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

from tests.browser import Page, chromium_page, chromium_path
from tests.conftest import TrainedDigits
from tests.digits import export_onnx, train_digits_cnn
from workers.core.audit_settings import AuditSettings, Metric
from workers.core.report import AuditReport
from workers.engine.audit import run_audit
from workers.engine.figures import MapReader
from workers.engine.figures.common import DATA_COLUMNS
from workers.engine.figures.curves import _data_panel
from workers.engine.figures.grids import grid_layout
from workers.engine.html_report import write_html_report
from workers.engine.training_twins import DataTestInputs

SETTINGS = AuditSettings(
    methods=["gradient", "gradcam", "edge_detector"],
    tests=["cascading", "independent", "data"],
    draws=1,
    max_draws=1,
)
TESTS = ("cascading", "independent", "data")
SHOWN = {f"{test}-{kind}.png" for test in TESTS for kind in ("similarity", "absolute", "diverging")}
FIGURES = {"verdicts.png"} | SHOWN | {name.replace(".png", "-narrow.png") for name in SHOWN}
LAPTOP, PHONE = (1280, 800, False), (390, 844, True)
LEGIBLE_PX = 9  # the smallest text a figure may show, in CSS pixels
# The page of this audit (3 methods, 3 tests) is about 3,600 px tall at 1280 px; it was 8,100 px when
# every grid stacked its probe images and every figure was open.
MAX_PAGE_HEIGHT = 5000


@pytest.fixture(scope="module")
def audited(
    trained_digits: TrainedDigits, tmp_path_factory: pytest.TempPathFactory
) -> tuple[AuditReport, Path]:
    inputs = client_models(trained_digits, tmp_path_factory.mktemp("client-models"))
    out = tmp_path_factory.mktemp("html-report")
    report = run_audit(trained_digits.onnx_legacy, trained_digits.probes, SETTINGS, out, data_inputs=inputs)
    return report, write_html_report(report, out)


def client_models(trained_digits: TrainedDigits, folder: Path) -> DataTestInputs:
    """Two random-label twins and two true-label controls, briefly trained: the data test's figures need
    their maps, not their quality."""
    data, paths = trained_digits.data, []
    for seed, shuffled in [(1, True), (2, True), (3, False), (4, False)]:
        labels = np.random.default_rng(seed).permutation(data.y_train) if shuffled else data.y_train
        model = train_digits_cnn(dataclasses.replace(data, y_train=labels), seed=seed, epochs=4)
        export_onnx(model, folder / f"{seed}.onnx", dynamo=False)
        paths.append(folder / f"{seed}.onnx")
    return DataTestInputs(twins=tuple(paths[:2]), controls=tuple(paths[2:]))


def _matrix(report: AuditReport) -> list[list[str]]:
    """Judged methods, each with its outcome per test, as the page's verdict table should show them."""
    return [
        [method.name, *(test.verdict.outcome.value for test in method.tests if test.verdict is not None)]
        for method in report.methods
        if not method.baseline
    ]


def _not_blank(png: bytes) -> bool:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
    return pixels.std() > 5


def test_the_page_embeds_every_figure_and_makes_no_request(audited: tuple[AuditReport, Path]) -> None:
    _, html = audited
    page = html.read_text()
    assert "<script" not in page
    assert not re.search(r"""(src|srcset|href)=["'](?!data:|#)""", page), "the page refers outside it"
    wide = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="([^"]+)"', page)
    narrow = re.findall(r'<source media="[^"]+" srcset="data:image/png;base64,([^"]+)"', page)
    assert len(wide) == len(narrow) == len(SHOWN)
    assert all(_not_blank(base64.b64decode(data)) for data in [d for d, _ in wide] + narrow)


def test_the_page_explains_the_tests_that_ran_and_counts_twins_apart_from_draws(
    audited: tuple[AuditReport, Path], tmp_path: Path
) -> None:
    report, html = audited
    page = html.read_text()
    assert "re-initializations per stage</th><td>cascading 1; independent 1<" in page
    assert "2 random-label twins and 2 true-label controls, supplied with the request" in page
    assert "weights or its training labels" in page and "retrain floor" in page
    parameters_only = report.model_copy(
        update={"methods": [m.model_copy(update={"tests": m.tests[:2]}) for m in report.methods]}
    )
    (tmp_path / "maps.zip").write_bytes((html.parent / "maps.zip").read_bytes())
    page = write_html_report(parameters_only, tmp_path).read_text()
    assert "training labels" not in page and "retrain floor" not in page and "twins" not in page


def _levels(axis: Axes) -> set[tuple[str, float, float]]:
    """The horizontal segments of a panel: line style, width and level."""
    return {
        (line.get_linestyle(), line.get_linewidth(), round(float(line.get_ydata()[0]), 6))
        for line in axis.get_lines()
        if len(line.get_ydata()) == 2 and len(set(line.get_ydata())) == 1
    }


def test_the_data_curves_name_their_columns_and_draw_the_retrain_floor_and_gap(
    audited: tuple[AuditReport, Path],
) -> None:
    report, _ = audited
    rule = report.settings.verdict
    for metric in (rule.metric, Metric.ssim):
        axis = Figure().subplots()
        _data_panel(axis, report, "data", metric)
        assert [label.get_text() for label in axis.get_xticklabels()] == DATA_COLUMNS
        for method in report.methods:
            result = next(t for t in method.tests if t.test.value == "data")
            floor = round(result.retrain_floor[metric].mean, 6)
            assert ("-.", 1.0, floor) in _levels(axis), (method.name, metric)
            gap_bar = ("-", 3.0, round(floor - rule.retrain_gap, 6))
            assert (gap_bar in _levels(axis)) == (metric is rule.metric and not method.baseline)


def test_figures_read_the_first_images_of_each_archived_array_exactly(
    audited: tuple[AuditReport, Path],
) -> None:
    _, html = audited
    reader = MapReader(html.parent / "maps.zip", 2)
    try:
        with zipfile.ZipFile(html.parent / "maps.zip") as archive:
            for path, read in [
                ("inputs.npy", reader.inputs()),
                ("maps/gradient/trained.npy", reader.maps("gradient", "cascading", 0)),
                ("maps/gradcam/independent/03.npy", reader.maps("gradcam", "independent", 3)),
            ]:
                full = np.load(io.BytesIO(archive.read(path)))
                assert read is not None and read.dtype == full.dtype
                np.testing.assert_array_equal(read, full[:2])
    finally:
        reader.close()


def test_figures_and_the_page_are_written_beside_the_report_and_into_the_archive(
    audited: tuple[AuditReport, Path],
) -> None:
    _, html = audited
    out = html.parent
    assert {p.name for p in (out / "figures").iterdir()} == FIGURES
    with zipfile.ZipFile(out / "maps.zip") as archive:
        assert archive.testzip() is None
        names = set(archive.namelist())
        assert archive.read("report.html") == html.read_bytes()
    assert {f"figures/{name}" for name in FIGURES} | {"report.html", "manifest.json", "report.json"} <= names


@pytest.mark.parametrize(
    ("images", "columns", "size", "width", "per_band", "scale"),
    [
        (3, 6, 28, 1070, 3, 2),  # LeNet on a laptop: three probe images side by side, maps twice their size
        (3, 6, 16, 1070, 3, 3),
        (3, 6, 16, 260, 1, 2),  # a phone: one image a band rather than maps below 32 px
        (3, 6, 28, 260, 1, 1),  # at their own size where twice it does not fit
        (3, 6, 224, 1070, 1, 1060 / 1344),  # large maps of a deep model: shrunk to fit
    ],
)
def test_a_grid_puts_probe_images_side_by_side_while_their_maps_keep_their_size(
    images: int, columns: int, size: int, width: int, per_band: int, scale: float
) -> None:
    layout = grid_layout(images, columns, size, width)
    assert (layout.per_band, layout.scale) == (per_band, pytest.approx(scale))


def _page_layout(page: Page) -> dict[str, Any]:
    """What the reader's screen shows: the page's size, the layout viewport's width (a phone's
    ``innerWidth`` grows to a page too wide for it), the elements that scroll sideways and, per figure,
    its drawing's natural and shown width, the width of its column, and the attributes the drawing
    carries (smallest text, pixels per map pixel)."""
    return page.evaluate(
        """Promise.all(Array.from(document.images).map(async (img) => {
            await img.decode();
            const source = img.parentElement.querySelector('source');
            const chosen = source && img.currentSrc === source.getAttribute('srcset') ? source : img;
            return {id: img.closest('figure').id, natural: img.naturalWidth,
                    shown: img.getBoundingClientRect().width, narrow: chosen !== img,
                    column: img.closest('figure').getBoundingClientRect().width,
                    font: Number(chosen.dataset.fontPx || 0), scale: Number(chosen.dataset.mapScale || 0)};
        })).then((figures) => ({figures, viewport: document.documentElement.clientWidth,
            scrollWidth: document.scrollingElement.scrollWidth,
            height: document.scrollingElement.scrollHeight,
            scrollers: Array.from(document.body.querySelectorAll('*')).filter((element) =>
                element.scrollWidth > element.clientWidth + 1
                && ['auto', 'scroll'].includes(getComputedStyle(element).overflowX))
              .map((element) => element.tagName + '.' + element.className)}))"""
    )


def one_image_of_maps(html: Path) -> dict[str, int]:
    """Per grid figure, the width of one probe image's maps at their own size: the trained model's and
    each stage's (the data test: the first twin's and each archived control's)."""
    report = AuditReport.model_validate_json((html.parent / "report.json").read_text())
    method, width = report.methods[0], report.probes.shape[-1]
    reader = MapReader(html.parent / "maps.zip", 1)
    try:
        controls = len(reader.controls(method.name))
    finally:
        reader.close()
    columns = {
        t.test.value: len(t.stages) + (controls if t.test.value == "data" else 0) for t in method.tests
    }
    return {
        f"{test}-{kind}.png": n * width for test, n in columns.items() for kind in ("absolute", "diverging")
    }


def layout_problems(layout: dict[str, Any], grids: dict[str, int], laptop: bool) -> list[str]:
    """Everything on this screen a reader would have to zoom or scroll sideways for. Text and map sizes
    are the drawing's own (in its pixels) times the scale the page shows it at; a grid must also be at
    least as wide as one probe image's maps at their own size, and on a laptop use most of its column."""
    problems = [f"{element} scrolls sideways" for element in layout["scrollers"]]
    if layout["scrollWidth"] > layout["viewport"]:
        problems.append(f"the page scrolls sideways: {layout['scrollWidth']} px in {layout['viewport']}")
    if laptop and layout["height"] > MAX_PAGE_HEIGHT:
        problems.append(f"the page is {layout['height']} px tall")
    for figure in layout["figures"]:
        ratio = figure["shown"] / figure["natural"]
        if not figure["font"] or ratio * figure["font"] < LEGIBLE_PX:
            problems.append(f"{figure['id']}: its smallest text shown {ratio * figure['font']:.1f} px high")
        if figure["id"] not in grids:
            continue
        if not figure["scale"] or ratio * figure["scale"] < 1:
            problems.append(f"{figure['id']}: a map pixel shown {ratio * figure['scale']:.2f} px wide")
        if figure["shown"] < grids[figure["id"]]:
            problems.append(f"{figure['id']}: {figure['shown']:.0f} px, narrower than one image's maps")
        if laptop and figure["shown"] < 0.6 * figure["column"]:
            problems.append(f"{figure['id']}: {figure['shown']:.0f} px of a {figure['column']:.0f} px column")
    return problems


needs_chromium = pytest.mark.skipif(
    chromium_path() is None,
    reason="chromium is not installed (scripts/test installs it where apt-get can run)",
)
on_laptop_and_phone = pytest.mark.parametrize(
    ("width", "height", "mobile"), [LAPTOP, PHONE], ids=["laptop", "phone"]
)


@needs_chromium
@on_laptop_and_phone
def test_chromium_shows_every_figure_legibly_without_sideways_scrolling(
    audited: tuple[AuditReport, Path], width: int, height: int, mobile: bool
) -> None:
    report, html = audited
    with chromium_page(width=width, height=height, mobile=mobile) as page:
        page.load(html.as_uri())
        layout = _page_layout(page)
        pixels = page.evaluate(
            """Array.from(document.images).map((img) => {
                const canvas = document.createElement('canvas');
                canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
                const context = canvas.getContext('2d');
                context.drawImage(img, 0, 0);
                const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
                let sum = 0, squares = 0;
                for (let i = 0; i < data.length; i += 4) { sum += data[i]; squares += data[i] * data[i]; }
                const n = data.length / 4, mean = sum / n;
                return Math.sqrt(squares / n - mean * mean);
            })"""
        )
        matrix = page.evaluate(
            """Array.from(document.querySelectorAll('#verdicts tbody tr')).map((row) =>
                [row.cells[0].textContent.trim(), ...Array.from(
                    row.querySelectorAll('td[data-outcome]'), (cell) => cell.dataset.outcome)])"""
        )
    assert page.failed_requests == []
    assert {figure["id"] for figure in layout["figures"]} == SHOWN
    assert all(figure["narrow"] == mobile for figure in layout["figures"])
    assert all(std > 5 for std in pixels), pixels  # decoded and not blank
    assert matrix == _matrix(report) and matrix
    assert layout_problems(layout, one_image_of_maps(html), laptop=not mobile) == []


def test_drawing_an_audit_again_replaces_its_figures_and_page(audited: tuple[AuditReport, Path]) -> None:
    report, html = audited
    with zipfile.ZipFile(html.parent / "maps.zip") as archive:
        before = archive.namelist()
    write_html_report(report, html.parent)
    with zipfile.ZipFile(html.parent / "maps.zip") as archive:
        after = archive.namelist()
        assert archive.testzip() is None
    assert sorted(after) == sorted(before) and len(set(after)) == len(after)
