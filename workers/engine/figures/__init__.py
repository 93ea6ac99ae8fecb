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

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display; set before anything draws

from workers.core.report import AuditReport
from workers.engine.figures.common import (
    MAX_GRID_IMAGES,
    ONE_COMPARISON_TESTS,
    FigureImage,
    MapReader,
    report_tests,
)
from workers.engine.figures.curves import curves_figure
from workers.engine.figures.grids import grid_figure
from workers.engine.figures.judged import entropy_figure, judged_figure, judged_results
from workers.engine.figures.verdicts import verdict_figure

__all__ = ["FigureImage", "MapReader", "render_figures"]


def render_figures(report: AuditReport, archive: Path) -> list[FigureImage]:
    """Every figure the report's results allow, in reading order: verdicts, then each test's curves and
    maps."""
    reader = MapReader(archive, MAX_GRID_IMAGES)
    try:
        figures = [verdict_figure(report)]
        for test in report_tests(report):
            if test in ONE_COMPARISON_TESTS:
                figures += [judged_figure(report, test)] if judged_results(report, test) else []
            else:
                figures.append(curves_figure(report, test))
            if test == "efficient_mprt":
                figures.append(entropy_figure(report, reader, test))
            for signed in (False, True):
                grid = grid_figure(report, reader, test, signed)
                if grid is not None:
                    figures.append(grid)
        return figures
    finally:
        reader.close()
