"""The model parameter randomization tests: cascading (cumulative) and independent (one block at a time).

Both are judged on the whole curve: the statistic is each image's mean similarity over the randomized
stages of a draw (the area under the curve), so a method whose maps stay similar while the upper part of
the network is randomized fails even when the last stage looks different (docs/decisions/0008).
"""

from collections.abc import Iterator

import numpy as np

from workers.core.audit_settings import LayerOrder, RandomizationTest
from workers.core.report import Stage, Verdict
from workers.engine.checks.base import RetrainFloor, SanityCheck, StageValues, non_finite_by_stage
from workers.engine.parameter_stages import StageModel, randomized_stages
from workers.engine.statistics import defined_mean, draw_intervals, summarize
from workers.engine.verdict import Judged, decide


def curve_mean(tables: list[np.ndarray]) -> np.ndarray:
    """[draws, images]: each image's mean over the stages where its similarity is defined."""
    return defined_mean(np.stack(tables), axis=0)  # [stages, draws, images] -> [draws, images]


class _ParameterCheck(SanityCheck):
    cumulative: bool
    shares_trained = True

    def draws(self) -> int:
        return self.context.settings.draws

    def stage_count(self) -> int:
        return len(self.context.stage_blocks)

    def order(self) -> LayerOrder | None:
        return self.context.settings.order

    def stage_models(self, draw: int) -> Iterator[StageModel]:
        context = self.context
        return randomized_stages(context.model, context.stage_blocks, self.cumulative, context.settings, draw)

    def judge(self, trained: Stage, stages: list[StageValues], retrain_floor: RetrainFloor | None) -> Verdict:
        metric = self.rule.metric
        curve = curve_mean([stage.table(metric) for stage in stages])
        estimate = summarize(curve)
        cross = summarize(curve_mean([stage.table(metric, cross=True) for stage in stages])).mean
        judged = Judged(
            statistic=f"mean {metric.value} over the {len(stages)} randomized stages",
            estimate=estimate,
            limit=self.rule.threshold,
            limit_text=f"{self.rule.threshold}",
            cross_image=cross,
            non_finite=non_finite_by_stage(trained, stages),
            draw_intervals=draw_intervals(curve),
            unit="draws",
        )
        return decide(judged, self.rule, self._similar_layers(stages))

    def _similar_layers(self, stages: list[StageValues]) -> list[str]:
        return []


class Cascading(_ParameterCheck):
    test = RandomizationTest.cascading
    cumulative = True


class Independent(_ParameterCheck):
    test = RandomizationTest.independent
    cumulative = False

    def _similar_layers(self, stages: list[StageValues]) -> list[str]:
        """Layers whose randomization alone leaves the maps similar: the verdict names them."""
        similar = []
        for stage in stages:
            low = summarize(stage.table(self.rule.metric)).ci95_low
            if low is not None and low >= self.rule.threshold:
                similar.extend(layer.name for layer in stage.randomized)
        return similar
