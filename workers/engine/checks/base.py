"""One interface for every randomization test, in the manner of the methods: a class per test.

A test says which models to compare the trained model with (per draw, a sequence of stages) and how to
judge the comparisons; the engine computes the maps and the similarities. A test from the later
literature (smooth MPRT, efficient MPRT) is one new subclass with a ``test`` name.
"""

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from torch import Tensor, nn

from workers.core.audit_settings import AuditSettings, LayerOrder, Metric, RandomizationTest, VerdictRule
from workers.core.errors import AuditInputError
from workers.core.report import MetricTable, Stage, Verdict
from workers.engine.blocks import Block, layer_blocks
from workers.engine.layers import Layer
from workers.engine.parameter_stages import StageModel
from workers.engine.similarity import PreparedMaps
from workers.engine.statistics import draw_intervals, summarize, summarize_all
from workers.engine.training_twins import TwinPool
from workers.engine.verdict import Judged

_REGISTRY: dict[RandomizationTest, type["SanityCheck"]] = {}


@dataclass(frozen=True)
class CheckContext:
    model: nn.Module  # the trained model, never modified
    layers: list[Layer]
    settings: AuditSettings
    pool: TwinPool | None = None  # data test: the random-label twins and true-label controls
    inputs: Tensor | None = None  # the probes as the model sees them
    targets: Tensor | None = None  # the class each trained-model map explains, per probe
    classes: int = 0  # logits of the model
    blocks: list[Block] | None = None  # what a parameter test's stage randomizes; None: one layer each

    @property
    def stage_blocks(self) -> list[Block]:
        return self.blocks if self.blocks is not None else layer_blocks(self.layers)


@dataclass
class StageValues:
    """One stage's per-image comparisons, stacked over draws: [draws, images] per metric. It keeps the
    stage's description, never its model: a check holds every stage's values until it is judged."""

    index: int
    label: str
    randomized: list[Layer]
    similarity: dict[Metric, list[np.ndarray]] = field(default_factory=dict)
    cross_image: dict[Metric, list[np.ndarray]] = field(default_factory=dict)
    measures: dict[str, list[np.ndarray]] = field(default_factory=dict)  # a test's own, per image
    note: str | None = None
    degenerate: int = 0
    non_finite: int = 0

    def add(
        self,
        similarity: dict[Metric, np.ndarray],
        cross: dict[Metric, np.ndarray],
        maps: PreparedMaps,
        measures: dict[str, np.ndarray] | None = None,
    ) -> None:
        for metric, values in similarity.items():
            self.similarity.setdefault(metric, []).append(values)
            self.cross_image.setdefault(metric, []).append(cross[metric])
        for name, values in (measures or {}).items():
            self.measures.setdefault(name, []).append(values)
        self.degenerate += int(maps.constant.sum())
        self.non_finite += int(maps.non_finite.sum())

    def extend(self, later: "StageValues") -> None:
        """Append a later draw's values of the same stage."""
        for mine, theirs in (
            (self.similarity, later.similarity),
            (self.cross_image, later.cross_image),
            (self.measures, later.measures),
        ):
            for name, tables in theirs.items():
                mine.setdefault(name, []).extend(tables)  # type: ignore[arg-type]
        self.degenerate += later.degenerate
        self.non_finite += later.non_finite

    @classmethod
    def of(cls, stage: StageModel) -> "StageValues":
        return cls(stage.index, stage.label, stage.randomized, note=stage.note)

    def table(self, metric: Metric, cross: bool = False) -> np.ndarray:
        return np.stack((self.cross_image if cross else self.similarity)[metric])


@dataclass(frozen=True)
class RetrainFloor:
    """Similarity between honestly trained models, and how many of their maps held NaN or inf."""

    values: dict[Metric, np.ndarray]  # [pairs, images]
    pairs: list[tuple[int, int]]  # the two models of each row; 0 is the audited model, k the k-th control
    non_finite_maps: int

    @property
    def similarity(self) -> MetricTable:
        return summarize_all(self.values)

    @property
    def models(self) -> int:
        return len({model for pair in self.pairs for model in pair})


# maps of a model for the method under test, prepared; archived under a name and a draw index
MapsOf = Callable[[nn.Module, str, int], PreparedMaps]


class SanityCheck(ABC):
    test: ClassVar[RandomizationTest]
    # stage models hold the trained weights below their randomized layers, so stages may start from the
    # trained model's recorded forward passes there (``forward_record``)
    shares_trained: ClassVar[bool] = False
    # ``measure`` reads the raw maps of every stage beside the trained ones
    needs_raw_maps: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "test" in cls.__dict__:
            _REGISTRY[cls.test] = cls

    def __init__(self, context: CheckContext) -> None:
        self.context = context

    @abstractmethod
    def draws(self) -> int:
        """How many independent draws of the randomized models the test averages over."""

    def max_draws(self) -> int:
        """How many draws an undecided verdict may grow to (docs/decisions/0008)."""
        return max(self.draws(), self.context.settings.max_draws)

    @abstractmethod
    def stage_count(self) -> int:
        """Stages per draw (for progress)."""

    @abstractmethod
    def stage_models(self, draw: int) -> Iterator[StageModel]:
        """The models of one draw, in stage order; each is used before the next is asked for."""

    @abstractmethod
    def judge(
        self, trained: Stage, stages: list[StageValues], retrain_floor: "RetrainFloor | None"
    ) -> Verdict:
        """The verdict on the comparisons of every draw and stage with the trained maps."""

    def order(self) -> LayerOrder | None:
        """The order the stages walk the layers in; None where they do not walk them."""
        return None

    def reference(self) -> StageModel | None:
        """Where the maps every stage is compared with are not the trained model's maps on the probes
        (smooth MPRT: the trained model's maps averaged over noisy inputs), the stage that makes them."""
        return None

    def measure(self, trained: Tensor, stage: Tensor) -> dict[str, np.ndarray]:
        """Per-image measures of the raw maps beyond the similarity metrics (input invariance: how far
        the shifted maps lie from the trained ones); [images] each, NaN where undefined."""
        return {}

    def reference_count(self, draws: int) -> int:
        """Further models whose maps the test needs after ``draws`` draws (for progress)."""
        return 0

    def reference_models(self, draws: int) -> list[tuple[nn.Module, str, int]]:
        """The models ``retrain_floor`` compares after ``draws`` draws, each with its archive name and
        index: the audit computes their maps model by model for every method first, so methods made of
        the same parts share them (docs/decisions/0024)."""
        return []

    def retrain_floor(self, trained: PreparedMaps, maps_of: MapsOf, draws: int) -> "RetrainFloor | None":
        """How similar maps of honestly retrained models are; only the data test has one."""
        return None

    @property
    def rule(self) -> VerdictRule:
        return self.context.settings.verdict


def create_check(test: RandomizationTest, context: CheckContext) -> SanityCheck:
    try:
        return _REGISTRY[test](context)
    except KeyError:
        raise AuditInputError(f"no randomization test named {test.value!r}") from None


def judged_table(
    statistic: str,
    table: np.ndarray,
    limit: float,
    trained: Stage,
    stages: list[StageValues],
    *,
    unit: str = "draws",
    cross_image: float | None = None,
    higher_passes: bool = False,
) -> Judged:
    """What a test judges from a table [draws, images] of one statistic against a limit."""
    return Judged(
        statistic=statistic,
        estimate=summarize(table),
        limit=limit,
        limit_text=f"{limit}",
        cross_image=cross_image,
        non_finite=non_finite_by_stage(trained, stages),
        draw_intervals=draw_intervals(table),
        unit=unit,
        higher_passes=higher_passes,
    )


def non_finite_by_stage(trained: Stage, stages: list[StageValues]) -> dict[str, int]:
    counts = {trained.label: trained.non_finite_maps}
    counts.update({stage.label: stage.non_finite for stage in stages})
    return {label: count for label, count in counts.items() if count}
