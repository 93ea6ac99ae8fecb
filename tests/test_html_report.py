"""The HTML report of a real audit: self-contained, every figure drawn, the verdicts the report holds;
rendered in headless Chromium."""

import base64
import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.browser import chromium_page, chromium_path
from tests.conftest import TrainedDigits
from workers.engine.audit import run_audit
from workers.engine.figures import MapReader
from workers.engine.html_report import write_html_report
from workers.engine.report import AuditReport
from workers.engine.settings import AuditSettings

SETTINGS = AuditSettings(
    methods=["gradient", "gradcam", "edge_detector"],
    tests=["cascading", "independent"],
    draws=1,
    max_draws=1,
)
FIGURES = {
    "verdicts.png",
    "cascading-absolute.png",
    "cascading-diverging.png",
    "cascading-similarity.png",
    "independent-absolute.png",
    "independent-diverging.png",
    "independent-similarity.png",
}


@pytest.fixture(scope="module")
def audited(
    trained_digits: TrainedDigits, tmp_path_factory: pytest.TempPathFactory
) -> tuple[AuditReport, Path]:
    out = tmp_path_factory.mktemp("html-report")
    report = run_audit(trained_digits.onnx_legacy, trained_digits.probes, SETTINGS, out)
    return report, write_html_report(report, out)


def _outcomes(report: AuditReport) -> list[list[str]]:
    return [
        [method.name, test.test.value, test.verdict.outcome.value]
        for method in report.methods
        for test in method.tests
        if test.verdict is not None
    ]


def _not_blank(png: bytes) -> bool:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
    return pixels.std() > 5


def test_the_page_embeds_every_figure_and_makes_no_request(audited: tuple[AuditReport, Path]) -> None:
    _, html = audited
    page = html.read_text()
    assert "<script" not in page
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", page), "the page refers to something outside it"
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="([^"]+)"', page)
    assert len(images) == len(FIGURES)
    assert all(_not_blank(base64.b64decode(data)) for data, _ in images)


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


@pytest.mark.skipif(
    chromium_path() is None,
    reason="chromium is not installed (scripts/test installs it where apt-get can run)",
)
@pytest.mark.parametrize(("width", "mobile"), [(1280, False), (390, True)], ids=["desktop", "phone"])
def test_chromium_renders_the_page_with_every_figure_and_the_reports_verdicts(
    audited: tuple[AuditReport, Path], width: int, mobile: bool
) -> None:
    report, html = audited
    with chromium_page(width=width, mobile=mobile) as page:
        page.load(html.as_uri())
        images = page.evaluate(
            """Promise.all(Array.from(document.images).map(async (img) => {
                await img.decode();
                const canvas = document.createElement('canvas');
                canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
                const context = canvas.getContext('2d');
                context.drawImage(img, 0, 0);
                const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
                let sum = 0, squares = 0;
                for (let i = 0; i < data.length; i += 4) { sum += data[i]; squares += data[i] * data[i]; }
                const n = data.length / 4, mean = sum / n;
                return {id: img.closest('figure').id, width: img.naturalWidth,
                        shown: img.getBoundingClientRect().width, std: Math.sqrt(squares / n - mean * mean)};
            }))"""
        )
        rows = page.evaluate(
            """Array.from(document.querySelectorAll('#verdicts tbody tr')).map((row) =>
                Array.from(row.cells).slice(0, 3).map((cell) => cell.textContent.trim()))"""
        )
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert page.failed_requests == []
    assert {image["id"] for image in images} == FIGURES
    for image in images:
        assert image["width"] > 0 and image["std"] > 5, image  # decoded and not blank
        assert 0 < image["shown"] <= width, image  # scaled to the viewport
    assert rows == _outcomes(report) and rows
    assert overflow <= 0, "the page scrolls sideways"


def test_drawing_an_audit_again_replaces_its_figures_and_page(audited: tuple[AuditReport, Path]) -> None:
    report, html = audited
    with zipfile.ZipFile(html.parent / "maps.zip") as archive:
        before = archive.namelist()
    write_html_report(report, html.parent)
    with zipfile.ZipFile(html.parent / "maps.zip") as archive:
        after = archive.namelist()
        assert archive.testzip() is None
    assert sorted(after) == sorted(before) and len(set(after)) == len(after)
