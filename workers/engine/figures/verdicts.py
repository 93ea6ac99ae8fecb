"""The verdict overview: every method's outcome in every test."""

from matplotlib.patches import Rectangle

from workers.core.report import AuditReport
from workers.engine.figures.common import (
    FONT_PX,
    OUTCOME_COLOURS,
    FigureImage,
    drawing,
    method_label,
    new_figure,
    report_tests,
    result_of,
)


def verdict_figure(report: AuditReport) -> FigureImage:
    """Methods x tests, each cell coloured by its outcome and naming it: a picture to share (the page
    shows the same as a table)."""
    tests = report_tests(report)
    judged = [m for m in report.methods if not m.baseline]
    cell_w, cell_h, label_w, header = 96, 26, 130, 22
    width, height = label_w + cell_w * len(tests), header + cell_h * len(judged)
    figure = new_figure(width, height)
    axis = figure.add_axes((label_w / width, 0, 1 - label_w / width, 1 - header / height))
    for row, method in enumerate(judged):
        for column, test in enumerate(tests):
            result = result_of(method, test)
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
        [r + 0.45 for r in range(len(judged))], [method_label(m) for m in judged], fontsize=FONT_PX
    )
    axis.tick_params(length=0)
    for spine in axis.spines.values():
        spine.set_visible(False)
    return FigureImage("verdicts.png", "Verdicts", "Outcome of each method and test.", None, drawing(figure))
