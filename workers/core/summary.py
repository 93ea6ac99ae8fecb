"""A plain-text summary of a report for terminals and logs: one table per test, one row per method."""

from workers.core.audit_settings import PARAMETER_TESTS, RandomizationTest
from workers.core.report import (
    ENTROPY_MASK,
    ENTROPY_RANDOM,
    ENTROPY_RISE,
    ENTROPY_SHARE,
    ENTROPY_TRAINED,
    RELATIVE_L2,
    AuditReport,
    MethodResult,
    TestResult,
    Verdict,
)

ENTROPY = (ENTROPY_TRAINED, ENTROPY_RANDOM, ENTROPY_MASK, ENTROPY_RISE, ENTROPY_SHARE)
CURVE_TESTS = (*PARAMETER_TESTS, RandomizationTest.smooth_mprt)


def _value(number: float | None) -> str:
    return "   -  " if number is None else f"{number:6.3f}"


def _outcome(verdict: Verdict | None) -> str:
    return "baseline" if verdict is None else verdict.outcome.value.upper()


def _interval(verdict: Verdict | None) -> str:
    return _bounds(verdict.estimate.ci95_low, verdict.estimate.ci95_high) if verdict else _bounds(None, None)


def _margin(verdict: Verdict | None) -> str:
    margin = verdict.retrain_margin if verdict else None
    return _bounds(margin.ci95_low, margin.ci95_high) if margin else _bounds(None, None)


def _bounds(low: float | None, high: float | None) -> str:
    return "         -      " if low is None or high is None else f"[{low:6.3f}, {high:6.3f}]"


def _test_table(
    report: AuditReport, test: RandomizationTest, rows: list[tuple[MethodResult, TestResult]]
) -> str:
    metric = report.settings.verdict.metric
    first = rows[0][1]
    labels = [stage_name(stage.label) for stage in first.stages[1:]]
    what = (
        f"randomized {first.order.value.replace('_', '-')}, up to"
        if test in (RandomizationTest.cascading, RandomizationTest.smooth_mprt)
        else "only"
    )
    width = max(len(method.name) for method, _ in rows)
    header = f"{'method':<{width}}  draws  trained " + " ".join(
        f"{f'#{i}':>6}" for i in range(1, len(labels) + 1)
    )
    title = (
        "smooth MPRT: cascading on maps averaged over noisy copies of each probe (Hedström et al.):"
        if test is RandomizationTest.smooth_mprt
        else f"{test.value} randomization:"
    )
    lines = [
        f"{title} mean {metric.value} vs trained maps over images and draws "
        f"(column #k: {what} stage k below)",
        header + "   curve  95% interval      outcome",
    ]
    for method, result in rows:
        stages = " ".join(_value(stage.similarity[metric].mean) for stage in result.stages)
        estimate = result.verdict.estimate.mean if result.verdict else None
        lines.append(
            f"{method.name:<{width}}  {result.draws:>5}  {stages}  {_value(estimate)}  "
            f"{_interval(result.verdict)}  {_outcome(result.verdict)}"
        )
    lines.append(_legend([f"#{i} {name}" for i, name in enumerate(labels, 1)]))
    return "\n".join(lines)


def stage_name(label: str) -> str:
    """The block or layer a stage's label names ("layer3.1 and above" -> "layer3.1")."""
    for suffix in (" and above", " and below", " only"):
        label = label.removesuffix(suffix)
    return label


def _legend(items: list[str], width: int = 100) -> str:
    """Full stage names, wrapped: names of deep models are long and must not be cut."""
    lines, line = [], "stages:"
    for item in items:
        if len(line) + 2 + len(item) > width and line != "stages:":
            lines.append(line)
            line = "       "
        line += f"  {item}"
    return "\n".join([*lines, line])


def _skipped(report: AuditReport) -> list[str]:
    return [f"skipped (not defined on this model): {m.reason}" for m in report.skipped_methods]


def _data_table(report: AuditReport, rows: list[tuple[MethodResult, TestResult]]) -> str:
    metric = report.settings.verdict.metric
    info = report.data_randomization
    lines = []
    if info is not None:
        for run in info.training:
            lines.append(
                f"{run.role.replace('_', ' ')} {run.index + 1}: {run.epochs} epochs, {run.seconds:.1f} s, "
                f"train accuracy {run.train_accuracy:.3f}, held-out accuracy {run.heldout_accuracy:.3f} "
                f"(most frequent class {run.chance_accuracy:.3f})"
            )
    width = max(len(method.name) for method, _ in rows)
    lines.append(f"data randomization: mean {metric.value} vs trained maps over images and twins")
    columns = f"twins    twin  retrain  cross-img  {'95% interval':<18}{'retrain - twin':<20}outcome"
    lines.append(f"{'method':<{width}}  {columns}")
    for method, result in rows:
        twins = result.stages[-1]
        floor = result.retrain_floor[metric].mean if result.retrain_floor is not None else None
        cells = "   ".join(
            _value(c) for c in (twins.similarity[metric].mean, floor, twins.cross_image_floor[metric].mean)
        )
        lines.append(
            f"{method.name:<{width}}  {result.draws:>5}  {cells}  {_interval(result.verdict)}  "
            f"{_margin(result.verdict)}    {_outcome(result.verdict)}"
        )
    return "\n".join(lines)


def _invariance_table(report: AuditReport, rows: list[tuple[MethodResult, TestResult]]) -> str:
    metric = report.settings.verdict.metric
    width = max(len(method.name) for method, _ in rows)
    lines = [
        "input invariance: relative L2 difference of the maps of probes shifted by m, explained by the model "
        "whose first bias absorbs m, from the trained maps (Kindermans et al.)",
        f"{'method':<{width}}  rel. L2  95% interval      {metric.value:>12}  outcome",
    ]
    for method, result in rows:
        shifted = result.stages[-1]
        measure = shifted.measures.get(RELATIVE_L2)
        lines.append(
            f"{method.name:<{width}}  {_small(measure.mean if measure else None)}  "
            f"{_interval(result.verdict)}  {_value(shifted.similarity[metric].mean):>12}  "
            f"{_outcome(result.verdict)}"
        )
    note = rows[0][1].stages[-1].note
    if note:
        lines.append(f"shift: {note}")
    return "\n".join(lines)


def _small(number: float | None) -> str:
    return "     -  " if number is None else f"{number:8.2g}"


def _logit_table(report: AuditReport, rows: list[tuple[MethodResult, TestResult]]) -> str:
    metric = report.settings.random_logit_metric
    width = max(len(method.name) for method, _ in rows)
    lines = [
        f"random logit: mean {metric.value} between the maps of the explained class and of another class "
        "drawn uniformly (Sixt et al.), over images and draws",
        f"{'method':<{width}}  draws   other  cross-img  random mask  95% interval      outcome",
    ]
    for method, result in rows:
        other = result.stages[-1]
        cells = (
            f"{_value(other.similarity[metric].mean)}     {_value(other.cross_image_floor[metric].mean)}"
            f"       {_value(method.random_mask_calibration[metric].mean)}"
        )
        lines.append(
            f"{method.name:<{width}}  {result.draws:>5}  {cells}  {_interval(result.verdict)}  "
            f"{_outcome(result.verdict)}"
        )
    return "\n".join(lines)


def _entropy_table(report: AuditReport, rows: list[tuple[MethodResult, TestResult]]) -> str:
    width = max(len(method.name) for method, _ in rows)
    lines = [
        f"efficient MPRT: entropy of the maps ({report.settings.efficient_mprt_bins}-bin histogram) of the "
        "trained and the fully randomized model and of a random mask; rise = Hedström et al.'s "
        "(H random - H trained) / H trained, share = (H random - H trained) / (H mask - H trained), judged",
        f"{'method':<{width}}  draws  trained  random    mask    rise   share  95% interval      outcome",
    ]
    for method, result in rows:
        measures = result.stages[-1].measures
        cells = " ".join(_value(measures[name].mean if name in measures else None) for name in ENTROPY)
        lines.append(
            f"{method.name:<{width}}  {result.draws:>5}  {cells}  {_interval(result.verdict)}  "
            f"{_outcome(result.verdict)}"
        )
    return "\n".join(lines)


def _reasons(report: AuditReport) -> str:
    lines = ["why:"]
    for method in report.methods:
        for result in method.tests:
            if result.verdict is not None and result.verdict.outcome.value != "pass":
                lines.append(f"  {method.name}, {result.test.value}: {result.verdict.reason}")
    return "\n".join(lines) if len(lines) > 1 else "why: every judged method passed"


def _legend_of_outcomes(report: AuditReport, by_test: dict[RandomizationTest, list]) -> str:
    """How outcomes are decided, for the tests that ran."""
    rule = report.settings.verdict
    classic = any(test in (*CURVE_TESTS, RandomizationTest.data) for test in by_test)
    judged = f"{rule.metric.value} is below {rule.threshold}" if classic else "statistic is below its limit"
    parts = [
        f"outcome: PASS when the upper 95% bound (over images and draws) of the judged {judged}, FAIL when "
        "its lower bound is not, INCONCLUSIVE otherwise."
    ]
    if any(test in CURVE_TESTS for test in by_test):
        parts.append("Parameter tests judge the 'curve' (each image's mean over the randomized stages).")
    if RandomizationTest.data in by_test:
        parts.append(
            f"The data test judges the twins, also more than {rule.retrain_gap} below the retrain floor by "
            "the 95% interval of that distance."
        )
    settings = report.settings
    if RandomizationTest.input_invariance in by_test:
        parts.append(
            "Input invariance PASSES when the upper 95% bound of the relative L2 difference is below "
            f"{settings.invariance_tolerance}, FAILS when its lower bound is not."
        )
    if RandomizationTest.random_logit in by_test:
        parts.append(
            f"Random logit judges {settings.random_logit_metric.value} against "
            f"{settings.random_logit_threshold} the same way."
        )
    if RandomizationTest.efficient_mprt in by_test:
        parts.append(
            "Efficient MPRT PASSES when the lower 95% bound of the entropy share is above "
            f"{settings.efficient_mprt_min_share}, FAILS when its upper bound is not."
        )
    parts.append("Baselines need no model: never judged.")
    return " ".join(parts)


def _table(report: AuditReport, test: RandomizationTest, rows: list[tuple[MethodResult, TestResult]]) -> str:
    if test is RandomizationTest.data:
        return _data_table(report, rows)
    if test is RandomizationTest.input_invariance:
        return _invariance_table(report, rows)
    if test is RandomizationTest.random_logit:
        return _logit_table(report, rows)
    if test is RandomizationTest.efficient_mprt:
        return _entropy_table(report, rows)
    return _test_table(report, test, rows)


def format_summary(report: AuditReport) -> str:
    by_test: dict[RandomizationTest, list[tuple[MethodResult, TestResult]]] = {}
    for method in report.methods:
        for result in method.tests:
            by_test.setdefault(result.test, []).append((method, result))
    tables = [_table(report, test, rows) for test, rows in by_test.items()]
    parts = [
        f"model {report.model.filename} ({report.model.format}, sha256 {report.model.sha256[:12]}), "
        f"{report.probes.count} probes, {len(report.layers)} layers, device {report.device}, "
        f"{report.seconds:.1f} s{_work(report)}",
        f"conversion check: max |logit diff| {report.conversion.max_abs_logit_diff:.2e} "
        f"vs {report.conversion.reference_runtime}",
        report.target_policy_note,
        *_skipped(report),
        *tables,
        _legend_of_outcomes(report, by_test),
        _reasons(report),
    ]
    return "\n\n".join(parts)


def _work(report: AuditReport) -> str:
    """The image-passes behind the maps: a cost to compare across machines."""
    passes = report.image_passes
    return "" if passes is None else f", {passes.forward:,} images forward, {passes.backward:,} backward"
