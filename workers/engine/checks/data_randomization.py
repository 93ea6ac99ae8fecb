"""The data randomization test: the trained model's maps against those of random-label twins.

Every twin is a draw. The retrain floor is the similarity of models honestly trained on the true labels
with other seeds: the trained model against each true-label control, and the controls with each other.
A method passes when its twins' similarity lies below the threshold and ``retrain_gap`` below that floor,
the distance judged by its own interval, since the floor is an estimate from a few models too (0017);
one control cannot show how far the floor moves from model to model, so it decides no pass (0018).
When the floor itself is within the gap of what maps of unrelated images score, no twin could pass by a
margin that means anything: the test has no power and says so (docs/decisions/0008).
"""

from collections.abc import Iterator
from itertools import combinations

import numpy as np
from torch import nn

from workers.core.audit_settings import RandomizationTest
from workers.core.report import RetrainMargin, Stage, Verdict
from workers.engine.checks.base import MapsOf, RetrainFloor, SanityCheck, StageValues, non_finite_by_stage
from workers.engine.parameter_stages import StageModel
from workers.engine.similarity import PreparedMaps, compare_prepared
from workers.engine.statistics import draw_intervals, retrain_margin, summarize
from workers.engine.training_twins import TwinPool
from workers.engine.verdict import Judged, decide, inconclusive

TWIN_MAPS = "random_label_twin"
CONTROL_MAPS = "true_label_control"


class DataRandomization(SanityCheck):
    """Draw ``k`` is twin ``k``; with trained twins, control ``k`` joins the retrain floor with it."""

    test = RandomizationTest.data

    @property
    def pool(self) -> TwinPool:
        assert self.context.pool is not None, "the data test needs its twins"
        return self.context.pool

    def draws(self) -> int:
        return self.pool.initial

    def max_draws(self) -> int:
        return self.pool.limit

    def stage_count(self) -> int:
        return 1

    def reference_count(self, draws: int) -> int:
        client = self.pool.setup.client
        return len(client.controls) if client is not None else draws

    def stage_models(self, draw: int) -> Iterator[StageModel]:
        yield StageModel(1, "random-label twins", [], self.pool.twin(draw), TWIN_MAPS)

    def reference_models(self, draws: int) -> list[tuple[nn.Module, str, int]]:
        return [(model, CONTROL_MAPS, k) for k, model in enumerate(self.pool.controls(draws))]

    def retrain_floor(self, trained: PreparedMaps, maps_of: MapsOf, draws: int) -> RetrainFloor | None:
        controls = [maps_of(model, name, k) for model, name, k in self.reference_models(draws)]
        if not controls:
            return None
        models = [trained, *controls]
        pairs = [(0, k) for k in range(1, len(models))] + list(combinations(range(1, len(models)), 2))
        compared = [compare_prepared(models[a], models[b]) for a, b in pairs]
        values = {metric: np.stack([pair[metric] for pair in compared]) for metric in compared[0]}
        return RetrainFloor(values, pairs, sum(int(c.non_finite.sum()) for c in controls))

    def judge(self, trained: Stage, stages: list[StageValues], retrain_floor: RetrainFloor | None) -> Verdict:
        rule, metric = self.rule, self.rule.metric
        (twins,) = stages
        cross = summarize(twins.table(metric, cross=True)).mean
        floor = retrain_floor.similarity[metric].mean if retrain_floor is not None else None
        non_finite = non_finite_by_stage(trained, stages)
        if retrain_floor is not None and retrain_floor.non_finite_maps:
            non_finite["true-label controls"] = retrain_floor.non_finite_maps
        limit, limit_text, margin = (
            rule.threshold,
            f"{rule.threshold} (no true-label control measured the retrain floor)",
            None,
        )
        if retrain_floor is not None and floor is not None:
            limit = min(rule.threshold, floor - rule.retrain_gap)
            limit_text = f"{rule.threshold} and {rule.retrain_gap} below the retrain floor {floor:.3f}"
            mean, low, high = retrain_margin(
                retrain_floor.values[metric], retrain_floor.pairs, twins.table(metric)
            )
            margin = RetrainMargin(
                mean=mean, ci95_low=low, ci95_high=high, gap=rule.retrain_gap, models=retrain_floor.models
            )
        count = len(twins.similarity[metric])
        judged = Judged(
            statistic=f"mean {metric.value} between the trained model and its {count} random-label twin(s)",
            estimate=summarize(twins.table(metric)),
            draw_intervals=draw_intervals(twins.table(metric)),
            limit=limit,
            limit_text=limit_text,
            cross_image=cross,
            non_finite=non_finite,
            unit="twins",
            retrain_margin=margin,
        )
        verdict = decide(judged, rule)
        if verdict.cause in ("non_finite_maps", "too_few_images"):
            return verdict
        if floor is not None and cross is not None and floor - cross < rule.retrain_gap:
            return inconclusive(
                judged,
                rule,
                "no_power",
                f"no power: retrained models score {floor:.3f} and maps of different images {cross:.3f}, "
                f"less than the gap {rule.retrain_gap} apart, so no twin could fall that far below the "
                "retrain floor by losing image content alone",
            )
        return verdict
