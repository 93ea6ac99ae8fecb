"""The human-readable face of an audit: figures and one self-contained HTML page.

Drawn after the audit from its report.json and maps.zip (``figures``), so a run pays for it once, at the
end, and an audit's numbers never depend on it. The page embeds its figures as data URIs and holds no
script and no external reference: it reads offline, from a mail attachment or an artifact store.
"""

import base64
import os
import shutil
import zipfile
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from workers.engine.figures import FigureImage, render_figures
from workers.engine.report import ARCHIVE_FILE, HTML_FILE, AuditReport

FIGURES_FOLDER = "figures"

_templates = Environment(
    loader=PackageLoader("workers.engine", "templates"),
    autoescape=select_autoescape(["html", "j2"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_templates.filters["b64"] = lambda data: base64.b64encode(data).decode("ascii")


def render_html(report: AuditReport, figures: list[FigureImage]) -> str:
    verdicts = [(m, t) for m in report.methods for t in m.tests if t.verdict is not None]
    return _templates.get_template("report.html.j2").render(
        report=report,
        figures=figures,
        verdicts=verdicts,
        rule=report.settings.verdict,
        settings_json=report.settings.model_dump_json(indent=2),
    )


def write_html_report(report: AuditReport, out_dir: Path) -> Path:
    """Figures of ``report`` (the audit in ``out_dir``) into ``out_dir/figures`` and into maps.zip, then
    ``out_dir/report.html``; its path.

    The archive gains ``figures/*.png`` and ``report.html`` after its manifest (which lists the arrays).
    Drawing a folder again replaces them.
    """
    archive = out_dir / ARCHIVE_FILE
    figures = render_figures(report, archive)
    page = render_html(report, figures)
    folder = out_dir / FIGURES_FOLDER
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for figure in figures:
        (folder / figure.name).write_bytes(figure.png)
    files = {f"{FIGURES_FOLDER}/{figure.name}": figure.png for figure in figures} | {HTML_FILE: page.encode()}
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
