"""Pass, fail or inconclusive from a judged statistic and its limit (docs/decisions/0008).

Every test hands over the statistic it judges as a ``Summary`` over images and draws. The order of the
questions matters: a map holding NaN or inf makes every number suspect, too few defined images make the
interval meaningless, and when a quarter of the draws (at least one) lies clearly below the limit and
another quarter clearly above it, by each draw's own interval, the verdict would depend on the draw.
Only then does the interval speak: pass when it lies below the limit, fail when it lies at or above it.
A data test with true-label controls asks two things of its twins: that they lie below the threshold,
and that they lie the gap below the retrain floor, by the interval of that distance (the floor is itself
an estimate from a few models; docs/decisions/0017).
"""

import math
from dataclasses import dataclass

from workers.core.audit_settings import Outcome, VerdictRule
from workers.core.report import RetrainMargin, Summary, Verdict

FLOOR_MARGIN = 0.05  # a failing similarity this close to the cross-image floor gets an explanation
DISAGREEING_SHARE = 0.25  # draws disagree when at least this share lies clearly on each side of the limit
MIN_FLOOR_MODELS = 3  # the floor's spread between models needs a model left out to leave a pair


@dataclass(frozen=True)
class Judged:
    """What a test judges: the statistic, what it means, and the context a reader needs."""

    statistic: str  # e.g. "mean spearman_abs over the 5 randomized stages"
    estimate: Summary
    limit: float
    limit_text: str
    cross_image: float | None  # the same statistic between maps of different images
    non_finite: dict[str, int]  # stage label -> maps holding NaN or inf
    draw_intervals: list[tuple[float | None, float | None]]  # each draw's own 95% interval over images
    unit: str = "draws"  # what varies between draws: re-initializations or twins
    retrain_margin: RetrainMargin | None = (
        None  # data test with controls: the twins' distance below the floor
    )
    higher_passes: bool = False  # efficient MPRT: a rise above the limit passes, one at or below it fails


def decide(judged: Judged, rule: VerdictRule, similar_layers: list[str] | None = None) -> Verdict:
    outcome, cause, reason = _outcome(judged, rule)
    if similar_layers:
        reason += f"; randomizing any one of {', '.join(similar_layers)} alone leaves the maps similar"
    return Verdict(
        outcome=outcome,
        reason=reason,
        cause=cause,
        rule=_rule_text(judged, rule),
        metric=rule.metric,
        statistic=judged.statistic,
        estimate=judged.estimate,
        limit=judged.limit,
        retrain_margin=judged.retrain_margin,
        similar_layers=similar_layers or [],
    )


def _rule_text(judged: Judged, rule: VerdictRule) -> str:
    if judged.higher_passes:
        return (
            f"pass when the lower 95% bound of the {judged.statistic} is above {judged.limit_text}; fail "
            "when its upper bound is not; inconclusive otherwise"
        )
    if judged.retrain_margin is None:
        return (
            f"pass when the upper 95% bound of the {judged.statistic} is below {judged.limit_text}; fail "
            "when its lower bound is not; inconclusive otherwise"
        )
    gap = judged.retrain_margin.gap
    return (
        f"pass when the upper 95% bound of the {judged.statistic} is below {rule.threshold} and the lower "
        f"95% bound of the retrain floor less that mean is above {gap}; fail when the lower bound of the "
        f"mean is at or above {rule.threshold} or the upper bound of the distance is at or below {gap}; "
        "inconclusive otherwise"
    )


def inconclusive(judged: Judged, rule: VerdictRule, cause: str, reason: str) -> Verdict:
    """A verdict the test's own preconditions rule out (e.g. a data test without power)."""
    verdict = decide(judged, rule)
    return verdict.model_copy(update={"outcome": Outcome.inconclusive, "cause": cause, "reason": reason})


def _outcome(judged: Judged, rule: VerdictRule) -> tuple[Outcome, str | None, str]:
    estimate, limit = judged.estimate, judged.limit
    if judged.non_finite:
        where = ", ".join(f"{count} at {stage}" for stage, count in judged.non_finite.items())
        total = sum(judged.non_finite.values())
        return Outcome.inconclusive, "non_finite_maps", f"{total} maps hold NaN or inf ({where})"
    if estimate.n < rule.min_defined_images or estimate.mean is None:
        return (
            Outcome.inconclusive,
            "too_few_images",
            (
                f"only {estimate.n} image(s) have a defined similarity ({estimate.n_undefined} have constant "
                f"maps); at least {rule.min_defined_images} are needed"
            ),
        )
    if judged.higher_passes:
        below = [i for i, (_, high) in enumerate(judged.draw_intervals) if high is not None and high <= limit]
        above = [i for i, (low, _) in enumerate(judged.draw_intervals) if low is not None and low > limit]
        sides = f"{len(above)} lie above {limit:.3g} and {len(below)} at or below it"
    else:
        below = [i for i, (_, high) in enumerate(judged.draw_intervals) if high is not None and high < limit]
        above = [i for i, (low, _) in enumerate(judged.draw_intervals) if low is not None and low >= limit]
        sides = f"{len(below)} lie below {limit:.3g} and {len(above)} at or above it"
    if min(len(below), len(above)) >= max(1, math.ceil(DISAGREEING_SHARE * len(judged.draw_intervals))):
        means = ", ".join(f"{m:.3f}" for m in estimate.draw_means if m is not None)
        return (
            Outcome.inconclusive,
            "draws_disagree",
            f"the {judged.unit} disagree: {sides}, each by its own interval (means {means})",
        )
    low, high = estimate.ci95_low, estimate.ci95_high
    if low is None or high is None:
        return Outcome.inconclusive, "too_few_images", "no interval: one value cannot show its uncertainty"
    interval = (
        f"mean {estimate.mean:.3f}, 95% interval [{low:.3f}, {high:.3f}] over "
        f"{estimate.n} images and {_counted(len(judged.draw_intervals), judged.unit)}"
    )
    if judged.higher_passes:
        if low > limit:
            return Outcome.passed, None, f"{interval} lies above {limit:.3g}"
        if high <= limit:
            return Outcome.failed, None, f"{interval} lies at or below {limit:.3g}"
        return Outcome.inconclusive, "interval", f"{interval} contains {limit:.3g}"
    if judged.retrain_margin is not None:
        return _below_the_retrain_floor(judged, judged.retrain_margin, rule.threshold, (low, high), interval)
    if high < limit:
        return Outcome.passed, None, f"{interval} lies below {limit:.3g}" + _floor_text(judged, failed=False)
    if low >= limit:
        text = f"{interval} lies at or above {limit:.3g}" + _floor_text(judged, failed=True)
        return Outcome.failed, None, text
    return Outcome.inconclusive, "interval", f"{interval} contains {limit:.3g}"


def _below_the_retrain_floor(
    judged: Judged, margin: RetrainMargin, threshold: float, bounds: tuple[float, float], interval: str
) -> tuple[Outcome, str | None, str]:
    low, high = bounds
    if low >= threshold:  # no floor can make twins this similar pass
        return (
            Outcome.failed,
            None,
            f"{interval} lies at or above {threshold:.3g}" + _floor_text(judged, True),
        )
    if margin.mean is not None and margin.models < MIN_FLOOR_MODELS:
        return (
            Outcome.inconclusive,
            "floor_spread_unknown",
            f"{interval}; the retrain floor lies {margin.mean:.3f} above it, but it comes from one pair of "
            "models (the audited one and one true-label control), which cannot show how far the floor "
            "moves from model to model; with two or more controls the distance gets its interval",
        )
    if margin.mean is None or margin.ci95_low is None or margin.ci95_high is None:
        return Outcome.inconclusive, "too_few_images", "no interval for the distance below the retrain floor"
    distance = (
        f"the retrain floor lies {margin.mean:.3f} above it, 95% interval "
        f"[{margin.ci95_low:.3f}, {margin.ci95_high:.3f}]"
    )
    if margin.ci95_high <= margin.gap:
        text = f"{interval}; {distance}, not more than the gap {margin.gap:.3g}" + _floor_text(judged, True)
        return Outcome.failed, None, text
    if high < threshold and margin.ci95_low > margin.gap:
        text = f"{interval} lies below {threshold:.3g}; {distance}, beyond the gap {margin.gap:.3g}"
        return Outcome.passed, None, text + _floor_text(judged, False)
    if high >= threshold:
        return Outcome.inconclusive, "interval", f"{interval} contains {threshold:.3g}"
    text = f"{interval} lies below {threshold:.3g}, but {distance}, which contains the gap {margin.gap:.3g}"
    return Outcome.inconclusive, "interval", text


def _floor_text(judged: Judged, failed: bool) -> str:
    floor, mean = judged.cross_image, judged.estimate.mean
    if floor is None or mean is None:
        return ""
    text = f"; maps of different images score {floor:.3f}"
    if failed and mean - floor < FLOOR_MARGIN:
        text += (
            ", so the similarity that remains is shared by all images (e.g. the border pattern of "
            "unpadded convolutions), not image content"
        )
    return text


def _counted(count: int, unit: str) -> str:
    """'3 draws', '1 draw': ``unit`` is the plural."""
    return f"{count} {unit if count != 1 else unit.removesuffix('s')}"
