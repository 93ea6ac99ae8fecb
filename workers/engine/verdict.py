"""Pass or fail, per method and test, by the rule in ``VerdictRule`` (documented in docs/decisions/)."""

from workers.engine.report import Stage, Verdict
from workers.engine.settings import RandomizationTest, VerdictRule

FLOOR_MARGIN = 0.05  # a failing similarity this close to the cross-image floor gets an explanation


def judged_stage(test: RandomizationTest, stages: list[Stage]) -> Stage:
    """Cascading: every layer randomized (the last stage). Independent: the top layer alone (stage 1)."""
    return stages[-1] if test is RandomizationTest.cascading else stages[1]


def judge(test: RandomizationTest, stages: list[Stage], rule: VerdictRule, images: int) -> Verdict:
    stage = judged_stage(test, stages)
    summary = stage.similarity[rule.metric]
    rule_text = (
        f"pass when the upper 95% confidence bound of mean {rule.metric.value} at stage "
        f"{stage.index} ({stage.label}) is below {rule.threshold}"
    )
    upper = summary.ci95_high if summary.ci95_high is not None else summary.mean
    if upper is None:
        all_constant = stage.degenerate_maps == images and stages[0].degenerate_maps < images
        explanation = (
            "every map at this stage is constant: nothing of the trained maps survives randomization"
            if all_constant
            else "the similarity is undefined for every image (the trained maps are constant)"
        )
        return Verdict(
            passed=all_constant,
            rule=rule_text,
            metric=rule.metric,
            stage=stage.index,
            stage_label=stage.label,
            upper_bound=None,
            threshold=rule.threshold,
            explanation=explanation,
        )
    passed = upper < rule.threshold
    floor = stage.cross_image_floor[rule.metric].mean
    floor_text = f"; maps of different images score {floor:.3f} at this stage" if floor is not None else ""
    relation = "below" if passed else "not below"
    if not passed and floor is not None and summary.mean is not None and summary.mean - floor < FLOOR_MARGIN:
        floor_text += (
            ", so the similarity that remains is shared by all images (e.g. the border pattern of "
            "unpadded convolutions), not image content"
        )
    return Verdict(
        passed=passed,
        rule=rule_text,
        metric=rule.metric,
        stage=stage.index,
        stage_label=stage.label,
        upper_bound=upper,
        threshold=rule.threshold,
        explanation=f"upper bound {upper:.3f} is {relation} {rule.threshold}{floor_text}",
    )
