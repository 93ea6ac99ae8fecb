"""One test's work: each round of units run and merged, the references made once, each method judged;
more draws for the methods a verdict leaves undecided (docs/decisions/0008)."""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Protocol

from torch import nn

from workers.core.report import Stage, TestResult, Verdict
from workers.engine.archive import MapArchive
from workers.engine.assembly import stage_zero, summarized
from workers.engine.checks import RetrainFloor, SanityCheck, StageValues
from workers.engine.parameter_stages import StageModel
from workers.engine.passes import counting, new_counter
from workers.engine.plan import Unit, check_progress, draw_units
from workers.engine.similarity import PreparedMaps
from workers.engine.similarity import prepare as prepare_maps
from workers.engine.units import (
    AuditRun,
    MethodState,
    UnitResult,
    archive_maps,
    run_unit,
    stage_maps,
)

UNDECIDED = ("interval", "draws_disagree")  # causes that more draws may settle


class UnitExecutor(Protocol):
    """Runs units of the plan; the CLI runs them here, a Celery worker may hand them to others."""

    def run(
        self, run: AuditRun, units: list[Unit], states: dict[str, MethodState], archive: MapArchive
    ) -> Iterator[UnitResult]:
        """The units' results in the order of ``units``, their maps added to ``archive`` in that order."""
        ...


class InProcess:
    def run(
        self, run: AuditRun, units: list[Unit], states: dict[str, MethodState], archive: MapArchive
    ) -> Iterator[UnitResult]:
        for unit in units:
            yield run_unit(run, unit, states, archive)


@dataclass
class Ledger:
    """Seconds and image-passes per method, over every unit and reference of the audit."""

    seconds: dict[str, float] = field(default_factory=dict)
    passes: dict[str, dict[str, int]] = field(default_factory=dict)

    @contextmanager
    def spending(self, method: str) -> Iterator[None]:
        started = time.perf_counter()
        with counting(self.passes.setdefault(method, new_counter())):
            yield
        self.seconds[method] = self.seconds.get(method, 0.0) + time.perf_counter() - started

    def add(self, result: UnitResult) -> None:
        for method, passes in result.passes.items():
            counter = self.passes.setdefault(method, new_counter())
            for key, count in passes.items():
                counter[key] += count
            self.seconds[method] = self.seconds.get(method, 0.0) + result.seconds[method]


class CheckRun:
    """Every draw's stages against each method's reference maps (the trained ones, or the test's own);
    the test judges each method's table."""

    def __init__(
        self, run: AuditRun, check: SanityCheck, executor: UnitExecutor, archive: MapArchive, ledger: Ledger
    ) -> None:
        self.run, self.check, self.executor, self.archive, self.ledger = run, check, executor, archive, ledger
        self.test = check.test.value
        self.states: dict[str, MethodState] = {}  # the maps each method's stages are compared with
        self.zero: dict[str, Stage] = {}  # the row each method's table starts with
        self.stages: dict[str, dict[int, StageValues]] = {}  # by method and stage index, over draws
        self._controls: dict[tuple[str, str, int], PreparedMaps] = {}
        self._targets: set[str] = set()  # archive paths of the classes stages explained

    def results(
        self, trained: dict[str, MethodState], trained_stages: dict[str, Stage]
    ) -> dict[str, TestResult]:
        """A method whose verdict more draws may settle gets them; the others are done."""
        check = self.check
        self.states, self.zero = dict(trained), dict(trained_stages)
        reference = check.reference()
        if reference is not None:  # the check's own reference maps replace the trained ones
            for name, state in trained.items():
                self.states[name], self.zero[name] = self._referenced(state, reference)
        self.stages = {name: {} for name in self.states}
        draws = check.draws()
        self._add_draws(list(self.states), 0, draws)
        outcomes = {name: (*self._judged(name, draws), draws) for name in self.states}
        pending = [name for name in self.states if _undecided(outcomes[name][0])]
        while pending and draws < check.max_draws():
            more = min(check.draws(), check.max_draws() - draws)
            self._add_draws(pending, draws, draws + more)
            draws += more
            outcomes.update({name: (*self._judged(name, draws), draws) for name in pending})
            pending = [name for name in pending if _undecided(outcomes[name][0])]
        most = check_progress(check, check.max_draws())
        unused = sum(most - check_progress(check, used) for *_, used in outcomes.values())
        if unused:
            self.run.report_progress(f"{self.test}: every verdict settled", unused)
        return {
            name: TestResult(
                test=check.test,
                order=check.order(),
                draws=used,
                stages=[
                    self.zero[name],
                    *(summarized(values) for _, values in sorted(self.stages[name].items())),
                ],
                retrain_floor=floor.similarity if floor is not None else None,
                verdict=verdict,
            )
            for name, (verdict, floor, used) in outcomes.items()
        }

    def _add_draws(self, pending: list[str], first: int, last: int) -> None:
        """Draws ``first`` to ``last`` as units, merged in plan order; then the references they need."""
        units = draw_units(self.check.test, [self.states[name].method for name in pending], first, last)
        units.sort(key=self._cost, reverse=True)  # dearest first: workers finish a round together
        for result in self.executor.run(self.run, units, self.states, self.archive):
            self.ledger.add(result)
            for path, classes in result.targets.items():
                if path not in self._targets:
                    self._targets.add(path)
                    about = {"kind": "targets", "test": self.test, "draw": result.unit.draw}
                    self.archive.add_array(path, classes, **about)
            for name, values in result.stages.items():
                for stage in values:
                    known = self.stages[name].setdefault(stage.index, stage)
                    if known is not stage:
                        known.extend(stage)
        self._references_first(pending, last)

    def _cost(self, unit: Unit) -> int:
        """The unit's methods' image-passes so far (their trained maps at least): a deterministic guess at
        its share of the round's work, so every executor runs and merges units in the same order."""
        return sum(sum(self.ledger.passes.get(method, {}).values()) for method in unit.methods)

    def _references_first(self, pending: list[str], draws: int) -> None:
        """The reference models' maps model by model, every method on each: parts shared between methods
        (SmoothGrad's and VarGrad's) are computed once per model."""
        for model, name, index in self.check.reference_models(draws):
            for method in pending:
                self._control(self.states[method], model, name, index)
        self.run.shared.forget()

    def _judged(self, name: str, draws: int) -> tuple[Verdict | None, RetrainFloor | None]:
        """Baselines need no model: they are compared, never judged."""
        state = self.states[name]

        def controls(model: nn.Module, control: str, index: int) -> PreparedMaps:
            return self._control(state, model, control, index)

        floor = self.check.retrain_floor(state.trained, controls, draws)
        if state.baseline:
            return None, floor
        stages = self.stages[name]
        return self.check.judge(self.zero[name], [stages[index] for index in sorted(stages)], floor), floor

    def _control(self, state: MethodState, model: nn.Module, name: str, index: int) -> PreparedMaps:
        """A reference model's maps (the data test's controls), archived as its draw ``index``; made once,
        since they are compared again after every extension."""
        key = (state.name, name, index)
        if key not in self._controls:
            run = self.run
            with self.ledger.spending(state.name):
                raw = stage_maps(run, state, model, None)
                if index == 0 or run.settings.archive_all_draws:
                    archive_maps(self.archive, state.name, self.test, index, name, raw)
                self._controls[key] = state.trained if state.baseline else prepare_maps(raw)
            run.report_progress(f"{state.name}: {self.test} {name.replace('_', ' ')} {index + 1}", 1)
        return self._controls[key]

    def _referenced(self, state: MethodState, reference: StageModel) -> tuple[MethodState, Stage]:
        """``state`` with ``reference``'s maps to compare with (a baseline's stay as they are), and the row
        that starts the test's table."""
        run = self.run
        if state.baseline:  # a baseline's maps are the same for every model: its trained row stands
            run.report_progress(f"{state.name}: {reference.label}", 1)
            return state, self.zero[state.name]
        with self.ledger.spending(state.name):
            raw = stage_maps(run, state, reference.model, reference)
            archive_maps(self.archive, state.name, self.test, 0, reference.archive_name, raw, stage=0)
            referenced = replace(state, raw=raw, trained=prepare_maps(raw))
            stage = stage_zero(run.partners, referenced.trained, reference.label, reference.note)
        run.report_progress(f"{state.name}: {reference.label}", 1)
        return referenced, stage


def _undecided(verdict: Verdict | None) -> bool:
    return verdict is not None and verdict.cause in UNDECIDED
