"""Pass or fail, per method and test, by the rule in ``VerdictRule`` (docs/decisions/0003)."""

from workers.engine.report import Stage, Summary, Verdict
from workers.engine.settings import RandomizationTest, VerdictRule

FLOOR_MARGIN = 0.05  # a failing similarity this close to the cross-image floor gets an explanation


def judged_stage(test: RandomizationTest, stages: list[Stage]) -> Stage:
    """Cascading: every layer randomized (the last stage). Independent: the top layer alone (stage 1)."""
    return stages[-1] if test is RandomizationTest.cascading else stages[1]


def judge(test: RandomizationTest, stages: list[Stage], rule: VerdictRule, images: int) -> Verdict:
    stage = judged_stage(test, stages)
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
        passed = upper < rule.threshold
        explanation = _explain(passed, upper, rule.threshold, summary, stage.cross_image_floor[rule.metric])
    return Verdict(
        passed=passed,
        rule=f"pass when the upper 95% confidence bound of mean {rule.metric.value} at stage "
        f"{stage.index} ({stage.label}) is below {rule.threshold}",
        metric=rule.metric,
        stage=stage.index,
        stage_label=stage.label,
        upper_bound=upper,
        threshold=rule.threshold,
        explanation=explanation,
    )


def _explain(passed: bool, upper: float, threshold: float, summary: Summary, floor: Summary) -> str:
    text = f"upper bound {upper:.3f} is {'below' if passed else 'not below'} {threshold}"
    if floor.mean is None:
        return text
    text += f"; maps of different images score {floor.mean:.3f} at this stage"
    if not passed and summary.mean is not None and summary.mean - floor.mean < FLOOR_MARGIN:
        text += (
            ", so the similarity that remains is shared by all images (e.g. the border pattern of "
            "unpadded convolutions), not image content"
        )
    return text
