"""Random logit (Sixt, Granz, Landgraf, "When Explanations Lie", ICML 2020).

A map should explain the class it is asked about: the map of the explained class and the map of another
class, drawn uniformly from the others for each image, should differ. Methods whose modified backward
pass ignores the later layers (Guided Backprop, LRP-alpha-beta, PatternAttribution in the paper) give
nearly the same map whatever class is asked for. Each draw draws the other classes anew (seeded), so the
interval covers the choice of class as the parameter tests' covers the re-initialization. The model is
the trained one throughout; only the class changes. Pass when the upper 95% bound of the similarity lies
below ``random_logit_threshold``, fail when its lower bound does not (docs/decisions/0023).

A two-class model has one other class: every draw would give the same maps, so it has one draw, never
grown, and the verdict's reason says so.
"""

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from workers.core.audit_settings import RandomizationTest
from workers.core.errors import AuditInputError
from workers.core.report import Stage, Verdict
from workers.engine.checks.base import (
    CheckContext,
    RetrainFloor,
    SanityCheck,
    StageValues,
    judged_table,
)
from workers.engine.parameter_stages import StageModel
from workers.engine.statistics import summarize
from workers.engine.verdict import decide

OTHER_CLASS_MAPS = "other_class"
_STREAM = 0x10617  # keeps these draws apart from every other use of the seed
_ONE_DRAW = "a two-class model has one other class, so one draw, since every draw would give the same maps"


def other_classes(targets: Tensor, classes: int, seed: int, draw: int) -> Tensor:
    """For each image a class other than its target, uniform over the other ``classes - 1``."""
    rng = np.random.default_rng([seed, _STREAM, draw])
    offsets = torch.from_numpy(rng.integers(1, classes, size=len(targets))).to(targets.device)
    return (targets + offsets) % classes


class RandomLogit(SanityCheck):
    test = RandomizationTest.random_logit

    def __init__(self, context: CheckContext) -> None:
        super().__init__(context)
        if self.context.targets is None or self.context.classes < 2:
            raise AuditInputError("the random logit test needs a model with at least two classes")

    @property
    def single_other(self) -> bool:
        """Two classes: the other class is the same in every draw, and so are the maps."""
        return self.context.classes == 2

    def draws(self) -> int:
        return 1 if self.single_other else self.context.settings.draws

    def max_draws(self) -> int:
        return 1 if self.single_other else super().max_draws()

    def stage_count(self) -> int:
        return 1

    def stage_models(self, draw: int) -> Iterator[StageModel]:
        context = self.context
        assert context.targets is not None
        targets = other_classes(context.targets, context.classes, context.settings.seed, draw)
        note = (
            f"each image's map of the other class: {_ONE_DRAW}"
            if self.single_other
            else "each image's map of a class drawn uniformly from the other classes (seeded, per draw)"
        )
        yield StageModel(1, "another class", [], context.model, OTHER_CLASS_MAPS, targets=targets, note=note)

    def judge(self, trained: Stage, stages: list[StageValues], retrain_floor: RetrainFloor | None) -> Verdict:
        settings = self.context.settings
        metric, threshold = settings.random_logit_metric, settings.random_logit_threshold
        rule = self.rule.model_copy(update={"metric": metric, "threshold": threshold})
        (other,) = stages
        table = other.table(metric)
        judged = judged_table(
            f"mean {metric.value} between the maps of the explained class and of another class",
            table,
            threshold,
            trained,
            stages,
            cross_image=summarize(other.table(metric, cross=True)).mean,
        )
        verdict = decide(judged, rule)
        if self.single_other:
            verdict = verdict.model_copy(update={"reason": f"{verdict.reason} (two classes: {_ONE_DRAW})"})
        return verdict
