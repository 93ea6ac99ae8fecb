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


def _data_table(report: AuditReport) -> str:
    metric = report.settings.verdict.metric
    info = report.data_randomization
    lines = []
    if info is not None:
        for run in info.training:
            lines.append(
                f"{run.role.replace('_', ' ')}: {run.epochs} epochs, {run.seconds:.1f} s, train accuracy "
                f"{run.train_accuracy:.3f}, held-out accuracy {run.heldout_accuracy:.3f} "
                f"(most frequent class {run.chance_accuracy:.3f})"
            )
    rows = [m for m in report.methods if m.data_randomization is not None]
    width = max(len(m.name) for m in rows)
    lines.append(f"data randomization: mean {metric.value} vs trained maps")
    lines.append(f"{'method':<{width}}    twin  retrain  cross-img   upper95    limit  verdict")
    for method in rows:
        result = method.data_randomization
        assert result is not None
        floor = result.retrain_floor[metric].mean if result.retrain_floor is not None else None
        cells = [
            result.twin_similarity[metric].mean,
            floor,
            result.cross_image_floor[metric].mean,
            result.verdict.upper_bound,
            result.verdict.threshold,
        ]
        verdict = "pass" if result.verdict.passed else "FAIL"
        lines.append(f"{method.name:<{width}}  " + "   ".join(_value(c) for c in cells) + f"  {verdict}")
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
        *([_data_table(report)] if report.data_randomization is not None else []),
        f"verdict: pass when the upper 95% bound of mean {rule.metric.value} at the judged stage is below "
        f"{rule.threshold} (cascading: all layers; independent: top layer alone); 'cross-img' is the same "
        "metric between maps of different images at that stage"
        + (
            f"; data: below the limit, {rule.retrain_gap} under the retrain floor where a control exists"
            if report.data_randomization is not None
            else ""
        ),
    ]
    return "\n\n".join(parts)
