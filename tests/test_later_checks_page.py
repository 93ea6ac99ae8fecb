"""The page and figures of the later checks (docs/decisions/0023): each test's section says what it does
and how its stages were built, and shows figures of its own: the judged statistic against its limit,
the complexity histograms, the smoothed curve beside the plain one, maps named by what they compare."""

import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.browser import chromium_page
from tests.conftest import TrainedDigits
from tests.test_html_report import (
    _page_layout,
    layout_problems,
    needs_chromium,
    on_laptop_and_phone,
    one_image_of_maps,
)
from workers.core.audit_settings import AuditSettings, LayerOrder
from workers.core.report import AuditReport
from workers.engine.audit import run_audit
from workers.engine.checks.logit import other_classes
from workers.engine.figures import MapReader
from workers.engine.figures.common import GRID_COLUMNS
from workers.engine.figures.curves import _plain_cascading
from workers.engine.figures.grids import _class_captions
from workers.engine.html_report import write_html_report

LATER = ("input_invariance", "random_logit", "smooth_mprt", "efficient_mprt")
SETTINGS = AuditSettings(
    methods=["gradient", "gradient_x_input", "guided_backprop"],
    tests=["cascading", *LATER],
    order="bottom_up",  # the plain cascading test walks the smooth test's stages
    draws=1,
    max_draws=1,
    smooth_mprt_samples=2,
    batch_size=16,
)
OWN_FIGURES = {
    "input_invariance": {"judged", "absolute", "diverging"},
    "random_logit": {"judged", "absolute", "diverging"},
    "smooth_mprt": {"similarity", "absolute", "diverging"},
    "efficient_mprt": {"judged", "histograms", "absolute", "diverging"},
}


@pytest.fixture(scope="module")
def later_page(
    trained_digits: TrainedDigits, tmp_path_factory: pytest.TempPathFactory
) -> tuple[AuditReport, Path]:
    out = tmp_path_factory.mktemp("later-checks")
    report = run_audit(trained_digits.onnx_legacy, trained_digits.probes, SETTINGS, out)
    return report, write_html_report(report, out)


def _section(page: str, test: str) -> str:
    match = re.search(rf'<section id="{test}">(.*?)</section>', page, re.S)
    assert match, f"no section for {test}"
    return match.group(1)


def test_each_later_check_has_a_section_that_explains_it_with_figures_of_its_own(
    later_page: tuple[AuditReport, Path],
) -> None:
    _, html = later_page
    page = html.read_text()
    explained = {
        "input_invariance": ("Kindermans", "probes shifted by m = ["),
        "random_logit": ("Sixt", "a class drawn uniformly from the other classes"),
        "smooth_mprt": ("2 noisy copies", "maps averaged over 2 noisy copies"),
        "efficient_mprt": ("100-bin", "share of the way"),
    }
    for test, (introduction, detail) in explained.items():
        section = _section(page, test)
        assert introduction in section and detail in section, test
        figures = set(re.findall(rf'<figure id="{test}-([a-z]+)\.png">', section))
        assert figures == OWN_FIGURES[test], test
    assert "The later checks (input_invariance, random_logit, smooth_mprt, efficient_mprt)" in page


def test_the_provenance_counts_reinitializations_apart_from_other_class_draws(
    later_page: tuple[AuditReport, Path],
) -> None:
    _, html = later_page
    page = html.read_text()
    assert "re-initializations per stage</th><td>cascading 1; smooth_mprt 1; efficient_mprt 1<" in page
    assert "other classes drawn per image</th><td>1<" in page
    walked = "conv1 (1 layer), conv2 (1 layer), conv3 (1 layer), fc1 (1 layer), fc2 (1 layer)"
    assert f"stages (blocks)</th><td>5, in the order walked: {walked}<" in page  # a plain CNN's blocks


def test_the_random_logit_maps_name_the_classes_they_explain(later_page: tuple[AuditReport, Path]) -> None:
    """The archive keeps what every map explains: the trained maps' classes, and random logit's other
    classes once for all methods, which the grid names beside each probe."""
    report, html = later_page
    archive = html.parent / "maps.zip"
    reader = MapReader(archive, 3)
    try:
        explained = reader.targets("gradient", "random_logit", 0)
        other = reader.targets("gradient_x_input", "random_logit", 1)
        captions = _class_captions(reader, "gradient", "random_logit", 3)
    finally:
        reader.close()
    with zipfile.ZipFile(archive) as stored, stored.open("targets.npy") as member:
        every = np.load(member)
    assert len(every) == report.probes.count
    expected = other_classes(torch.from_numpy(every), 10, report.settings.seed, 0).numpy()
    np.testing.assert_array_equal(other, expected[:3])
    assert (other != explained).all()
    assert captions == [f"probe {k}:\nclass {explained[k]} vs {other[k]}" for k in range(3)]
    assert GRID_COLUMNS["random_logit"] == ["explained\nclass", "another\nclass"]


def test_the_smooth_curve_is_drawn_beside_the_plain_one_only_over_the_same_stages(
    later_page: tuple[AuditReport, Path],
) -> None:
    report, _ = later_page
    method = report.methods[0]
    smooth = next(t for t in method.tests if t.test.value == "smooth_mprt")
    plain = _plain_cascading(method, smooth)
    assert plain is not None and plain.order is LayerOrder.bottom_up
    top_down = plain.model_copy(update={"stages": [plain.stages[0], *reversed(plain.stages[1:])]})
    other_order = method.model_copy(update={"tests": [top_down, smooth]})
    assert _plain_cascading(other_order, smooth) is None
    assert _plain_cascading(method, plain) is None  # the plain test has no plain curve beside it


@needs_chromium
@on_laptop_and_phone
def test_chromium_shows_the_later_checks_legibly_without_sideways_scrolling(
    later_page: tuple[AuditReport, Path], width: int, height: int, mobile: bool
) -> None:
    _, html = later_page
    with chromium_page(width=width, height=height, mobile=mobile) as page:
        page.load(html.as_uri())
        layout = _page_layout(page)
    assert page.failed_requests == []
    shown = {figure["id"] for figure in layout["figures"]}
    assert {f"{test}-{kind}.png" for test, kinds in OWN_FIGURES.items() for kind in kinds} <= shown
    problems = layout_problems(layout, one_image_of_maps(html), laptop=not mobile)
    assert [p for p in problems if not p.startswith("the page is")] == []  # five tests make a long page
