"""A plain-text summary of a report for terminals and logs: one table per test, one row per method."""

from workers.engine.report import AuditReport, MethodResult, TestResult
from workers.engine.settings import RandomizationTest


def _value(number: float | None) -> str:
    return "   -  " if number is None else f"{number:6.3f}"


def _test_table(
    report: AuditReport, test: RandomizationTest, rows: list[tuple[MethodResult, TestResult]]
) -> str:
    metric = report.settings.verdict.metric
    top_down = [layer.name for layer in reversed(report.layers)]
    what = "layers randomized from the top down to" if test is RandomizationTest.cascading else "only layer"
    width = max(len(method.name) for method, _ in rows)
    header = f"{'method':<{width}}  trained " + " ".join(f"{name[:6]:>6}" for name in top_down)
    lines = [
        f"{test.value} randomization: mean {metric.value} vs trained maps (column: {what})",
        header + "  cross-img   upper95  verdict",
    ]
    for method, result in rows:
        stages = " ".join(_value(stage.similarity[metric].mean) for stage in result.stages)
        floor = result.stages[result.verdict.stage].cross_image_floor[metric].mean
        verdict = "pass" if result.verdict.passed else "FAIL"
        upper = _value(result.verdict.upper_bound)
        lines.append(f"{method.name:<{width}}  {stages}  {_value(floor)}    {upper}  {verdict}")
    return "\n".join(lines)


def format_summary(report: AuditReport) -> str:
    by_test: dict[RandomizationTest, list[tuple[MethodResult, TestResult]]] = {}
    for method in report.methods:
        for result in method.tests:
            by_test.setdefault(result.test, []).append((method, result))
    rule = report.settings.verdict
    parts = [
        f"model {report.model.filename} ({report.model.format}, sha256 {report.model.sha256[:12]}), "
        f"{report.probes.count} probes, {len(report.layers)} layers, device {report.device}, "
        f"{report.seconds:.1f} s",
        f"conversion check: max |logit diff| {report.conversion.max_abs_logit_diff:.2e} "
        f"vs {report.conversion.reference_runtime}",
        report.target_policy_note,
        *[_test_table(report, test, rows) for test, rows in by_test.items()],
        f"verdict: pass when the upper 95% bound of mean {rule.metric.value} at the judged stage is below "
        f"{rule.threshold} (cascading: all layers; independent: top layer alone); 'cross-img' is the same "
        "metric between maps of different images at that stage",
    ]
    return "\n\n".join(parts)
