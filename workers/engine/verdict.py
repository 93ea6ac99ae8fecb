"""Pass or fail, per method and test, by the rule in ``VerdictRule`` (docs/decisions/0003)."""

from workers.engine.report import MetricTable, Stage, Summary, Verdict
from workers.engine.settings import RandomizationTest, VerdictRule

FLOOR_MARGIN = 0.05  # a failing similarity this close to the cross-image floor gets an explanation


def judged_stage(test: RandomizationTest, stages: list[Stage]) -> Stage:
    """Cascading: every layer randomized (the last stage). Independent: the top layer alone (stage 1).
    Data: the random-label twin (the last stage)."""
    return stages[1] if test is RandomizationTest.independent else stages[-1]


def judge(
    test: RandomizationTest,
    stages: list[Stage],
    rule: VerdictRule,
    images: int,
    retrain_floor: MetricTable | None = None,
) -> Verdict:
    """``retrain_floor`` (data test only): the similarity of two models trained on the true labels."""
    stage = judged_stage(test, stages)
    floor = retrain_floor[rule.metric].mean if retrain_floor is not None else None
    limit, limit_text = rule.threshold, f"{rule.threshold}"
    if floor is not None:
        limit = min(rule.threshold, floor - rule.retrain_gap)
        limit_text = f"{rule.threshold} and {rule.retrain_gap} below the retrain floor {floor:.3f}"
    summary = stage.similarity[rule.metric]
    upper = summary.ci95_high if summary.ci95_high is not None else summary.mean
    if upper is None:
        passed = stage.degenerate_maps == images and stages[0].degenerate_maps < images
        explanation = (
            "every map at this stage is constant: nothing of the trained maps survives randomization"
            if passed
            else "the similarity is undefined for every image (the trained maps are constant)"
        )
    else:
        passed = upper < limit
        explanation = _explain(passed, upper, limit, summary, stage.cross_image_floor[rule.metric])
    return Verdict(
        passed=passed,
        rule=f"pass when the upper 95% confidence bound of mean {rule.metric.value} at stage "
        f"{stage.index} ({stage.label}) is below {limit_text}",
        metric=rule.metric,
        stage=stage.index,
        stage_label=stage.label,
        upper_bound=upper,
        threshold=limit,
        explanation=explanation,
    )


def _explain(passed: bool, upper: float, threshold: float, summary: Summary, floor: Summary) -> str:
    text = f"upper bound {upper:.3f} is {'below' if passed else 'not below'} {threshold:.3g}"
    if floor.mean is None:
        return text
    text += f"; maps of different images score {floor.mean:.3f} at this stage"
    if not passed and summary.mean is not None and summary.mean - floor.mean < FLOOR_MARGIN:
        text += (
            ", so the similarity that remains is shared by all images (e.g. the border pattern of "
            "unpadded convolutions), not image content"
        )
    return text
