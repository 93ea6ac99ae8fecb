"""The human-readable face of an audit: figures and one self-contained HTML page.

Drawn after the audit from its report.json and maps.zip (``figures``), so a run pays for it once, at the
end, and an audit's numbers never depend on it. The page embeds its figures as data URIs and holds no
script and no external reference: it reads offline, from a mail attachment or an artifact store. It reads
on any screen without zooming or scrolling sideways: each figure comes in a wide drawing and a narrow one
that narrow screens pick through a CSS media query (``<picture>``), each shown at its natural size.
"""

import base64
import os
import shutil
import zipfile
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from workers.core.audit_settings import RandomizationTest, StageUnit
from workers.core.report import ARCHIVE_FILE, HTML_FILE, AuditReport, MethodResult, TestResult
from workers.core.summary import stage_name
from workers.engine.figures import FigureImage, render_figures
from workers.engine.figures.common import TEST_TITLES

FIGURES_FOLDER = "figures"
LATER_TESTS = (  # judged by rules of their own (docs/decisions/0023), stated in their sections
    RandomizationTest.input_invariance,
    RandomizationTest.random_logit,
    RandomizationTest.smooth_mprt,
    RandomizationTest.efficient_mprt,
)
REINITIALIZING_TESTS = (
    RandomizationTest.cascading,
    RandomizationTest.independent,
    RandomizationTest.smooth_mprt,
    RandomizationTest.efficient_mprt,
)

_templates = Environment(
    loader=PackageLoader("workers.engine", "templates"),
    autoescape=select_autoescape(["html", "j2"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_templates.filters["b64"] = lambda data: base64.b64encode(data).decode("ascii")


def render_html(report: AuditReport, figures: list[FigureImage]) -> str:
    tests = list(dict.fromkeys(t.test for m in report.methods for t in m.tests))
    return _templates.get_template("report.html.j2").render(
        report=report,
        tests=tests,
        verdict_rows=_verdict_rows(report, tests),
        sections=_sections(report, figures, tests),
        draws=_stages(report) + _draws(report, tests),
        later_tests=[test.value for test in LATER_TESTS],
        rule=report.settings.verdict,
        settings_json=report.settings.model_dump_json(indent=2),
    )


def _verdict_rows(
    report: AuditReport, tests: list[RandomizationTest]
) -> list[tuple[MethodResult, list[TestResult | None]]]:
    """Judged methods, each with its result per test (None where the test did not run for it)."""
    rows = []
    for method in report.methods:
        by_test = {t.test: t for t in method.tests if t.verdict is not None}
        if by_test:
            rows.append((method, [by_test.get(test) for test in tests]))
    return rows


def _sections(
    report: AuditReport, figures: list[FigureImage], tests: list[RandomizationTest]
) -> list[tuple[str, str, list[str], list[tuple[FigureImage, bool]]]]:
    """Each test's name, title, how its stages were built (their notes: the shift, the smoothing, the
    other classes) and figures in the order drawn, each with whether it starts collapsed: the diverging
    maps repeat the absolute ones with their sign, for readers who look for it. The verdict overview
    stays a file: the page's verdict table shows the same, in text."""
    return [
        (
            test.value,
            TEST_TITLES[test.value],
            _stage_notes(report, test),
            [(f, f.name.endswith("-diverging.png")) for f in figures if f.test == test],
        )
        for test in tests
    ]


def _stage_notes(report: AuditReport, test: RandomizationTest) -> list[str]:
    notes = (stage.note for m in report.methods for t in m.tests if t.test is test for stage in t.stages)
    return [note for note in dict.fromkeys(notes) if note]


def _stages(report: AuditReport) -> list[tuple[str, str]]:
    """What each stage of the independent test (else the cascading one) randomized: the blocks, with their
    layer counts, where stages are blocks; one layer each otherwise (docs/decisions/0025)."""
    for test in (RandomizationTest.independent, RandomizationTest.cascading):
        result = next((t for m in report.methods for t in m.tests if t.test is test), None)
        if result is None:
            continue
        walked = result.stages[1:]
        if test is RandomizationTest.cascading:  # each stage adds its block to those before it
            counts = [len(s.randomized_layers) for s in walked]
            sizes = [later - earlier for earlier, later in zip([0, *counts], counts, strict=False)]
        else:
            sizes = [len(s.randomized_layers) for s in walked]
        blocks = [
            f"{stage_name(s.label)} ({n} layer{'s' if n != 1 else ''})"
            for s, n in zip(walked, sizes, strict=True)
        ]
        unit = "blocks" if report.settings.stages is StageUnit.blocks else "layers"
        return [(f"stages ({unit})", f"{len(walked)}, in the order walked: " + ", ".join(blocks))]
    return []


def _draws(report: AuditReport, tests: list[RandomizationTest]) -> list[tuple[str, str]]:
    """Provenance rows for what was drawn at random: re-initializations per stage of the tests that
    randomize weights, random logit's draws of other classes, and the data test's twins and controls
    (its draws are twins, not re-initializations). Input invariance draws nothing: one shift."""
    rows = []
    reinitializing = [test for test in tests if test in REINITIALIZING_TESTS]
    if reinitializing:
        text = "; ".join(f"{test.value} {_counts(_draws_by_method(report, test))}" for test in reinitializing)
        rows.append(("re-initializations per stage", text))
    if RandomizationTest.random_logit in tests:
        counts = _counts(_draws_by_method(report, RandomizationTest.random_logit))
        rows.append(("other classes drawn per image", counts))
    if RandomizationTest.data in tests:
        rows.append(("random-label twins, true-label controls", _twins_and_controls(report)))
    return rows


def _draws_by_method(report: AuditReport, test: RandomizationTest) -> dict[str, int]:
    return {m.name: t.draws for m in report.methods for t in m.tests if t.test is test and t.verdict}


def _counts(counts: dict[str, int]) -> str:
    """One number when every method drew as many times, else each method's: adaptive draws stop early
    for a method whose verdict is clear."""
    if len(set(counts.values())) == 1:
        return str(next(iter(counts.values())))
    return "(" + ", ".join(f"{name} {count}" for name, count in counts.items()) + ")"


def _twins_and_controls(report: AuditReport) -> str:
    compared = _draws_by_method(report, RandomizationTest.data)
    info = report.data_randomization
    if info is None:
        return f"twins compared {_counts(compared)}"
    if info.source == "client":
        twins, controls, made = len(info.twins), len(info.controls), "supplied with the request"
    else:
        twins = sum(run.role == "random_label_twin" for run in info.training)
        controls = sum(run.role == "true_label_control" for run in info.training)
        made = f"trained here on {info.training_data.filename}" if info.training_data else "trained here"
    text = f"{twins} random-label twins and {controls} true-label controls, {made}"
    return text if set(compared.values()) == {twins} else f"{text}; twins compared {_counts(compared)}"


def write_html_report(report: AuditReport, out_dir: Path) -> Path:
    """Figures of ``report`` (the audit in ``out_dir``) into ``out_dir/figures`` and into maps.zip, then
    ``out_dir/report.html``; its path.

    The archive gains ``figures/*.png`` (``*-narrow.png``: the phones' drawings) and ``report.html``
    after its manifest (which lists the arrays).
    Drawing a folder again replaces them.
    """
    archive = out_dir / ARCHIVE_FILE
    figures = render_figures(report, archive)
    page = render_html(report, figures)
    folder = out_dir / FIGURES_FOLDER
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    drawn = {name: png for figure in figures for name, png in figure.files().items()}
    for name, png in drawn.items():
        (folder / name).write_bytes(png)
    files = {f"{FIGURES_FOLDER}/{name}": png for name, png in drawn.items()} | {HTML_FILE: page.encode()}
    _extend_archive(archive, files)
    html = out_dir / HTML_FILE
    html.write_text(page, encoding="utf-8")
    return html


def _is_drawn(name: str) -> bool:
    return name == HTML_FILE or name.startswith(f"{FIGURES_FOLDER}/")


def _extend_archive(archive: Path, files: dict[str, bytes]) -> None:
    """Add ``files`` to a copy of the archive, without what an earlier drawing added, and move it into
    place: a crash leaves the archive as it was."""
    partial = archive.with_name(archive.name + ".partial")
    with zipfile.ZipFile(archive) as source:
        drawn_before = any(_is_drawn(name) for name in source.namelist())
        if drawn_before:
            with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as target:
                for member in source.infolist():
                    if not _is_drawn(member.filename):
                        target.writestr(member, source.read(member))
    if not drawn_before:
        shutil.copyfile(archive, partial)
    with zipfile.ZipFile(partial, "a", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as extended:
        for name, data in files.items():
            extended.writestr(name, data)
    os.replace(partial, archive)
