"""Runs one unit of the plan: a draw's stages of one test for a group of methods, compared with the maps
each method's stages are judged against. The same code runs a unit in the audit's own process and on
another worker; what a unit gives back (``UnitResult``) is all the judging and the report need of it.
"""

import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from workers.core.audit_settings import AuditSettings, RandomizationTest
from workers.core.errors import AuditCancelled
from workers.engine.budget import MemoryPlan
from workers.engine.checks import SanityCheck, StageValues
from workers.engine.forward_record import ForwardRecord, StageForward, first_step
from workers.engine.layers import Layer
from workers.engine.methods import MethodContext, SaliencyMethod, create_method
from workers.engine.methods.gradients import noise_std
from workers.engine.onnx_import import OnnxGraphModule
from workers.engine.parameter_stages import Smoothing, StageModel
from workers.engine.passes import count_passes, counting, new_counter
from workers.engine.plan import Unit
from workers.engine.shared_parts import SharedParts
from workers.engine.similarity import PreparedMaps, compare_prepared, prepare


class ArraySink(Protocol):
    """Where maps are archived: the audit's map archive, or a unit's own part of it."""

    def add_array(self, name: str, array: np.ndarray, **metadata: Any) -> None: ...


@dataclass
class AuditRun:
    """What every unit of an audit shares: the trained model, the probes, the classes they explain."""

    settings: AuditSettings  # as applied (the batch sizes the memory plan chose)
    model: nn.Module
    layers: list[Layer]
    x: Tensor
    fixed_target: Tensor | None
    methods: dict[str, SaliencyMethod]
    partners: np.ndarray  # image i's cross-image floor compares it with image partners[i]
    checks: dict[RandomizationTest, SanityCheck]  # the requested tests, in the order requested
    memory: MemoryPlan
    record: ForwardRecord  # the trained model's forward passes, for stages to start from
    should_cancel: Callable[[], bool]
    report_progress: Callable[[str, int], None]
    shared: SharedParts = field(default_factory=SharedParts)  # parts of maps several methods are made of

    def targets(self, model: nn.Module, inputs: Tensor | None = None) -> Tensor:
        x = self.x if inputs is None else inputs
        return self.fixed_target if self.fixed_target is not None else predictions(model, x, self.settings)

    def forward_for(self, model: nn.Module, start: int) -> nn.Module:
        """The model that methods reusing forward work run on at a stage whose steps before ``start``
        are as trained (0: none are). A batch the record lacks is recorded when first seen."""
        if start == 0 or not isinstance(model, OnnxGraphModule):
            return model
        return StageForward(model, self.record, start, self.memory.memo_bytes, True)


@dataclass
class MethodState:
    """One method's maps that a test's stages are compared with: the trained model's, or the test's own
    reference maps (smooth MPRT's smoothed ones)."""

    method: SaliencyMethod
    noise_seed: int
    raw: Tensor  # the maps as the method gave them
    trained: PreparedMaps

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def baseline(self) -> bool:
        """A baseline needs no model: its maps are the same at every stage."""
        return not self.method.uses_model

    @classmethod
    def of(cls, method: SaliencyMethod, seed: int, raw: Tensor) -> "MethodState":
        return cls(method, noise_seed(method, seed), raw, prepare(raw))


def noise_seed(method: SaliencyMethod, seed: int) -> int:
    """Noise depends on the method's family (or name), not its place in the list."""
    method_key = zlib.crc32(method.noise_key.encode())
    return int(np.random.SeedSequence([seed, method_key]).generate_state(1)[0])


@dataclass
class UnitResult:
    """One unit's comparisons (its draw's stages, per method), image-passes and seconds per method."""

    unit: Unit
    stages: dict[str, list[StageValues]]
    passes: dict[str, dict[str, int]]
    seconds: dict[str, float]
    # the classes a stage's maps explain where they are not the trained maps' (random logit's), by their
    # archive path: the same for every group of the draw, so whoever merges archives each once
    targets: dict[str, np.ndarray] = field(default_factory=dict)


def run_unit(run: AuditRun, unit: Unit, states: dict[str, MethodState], archive: ArraySink) -> UnitResult:
    """Every stage of the unit's draw for its methods, stage by stage: each stage's model is built once
    and every method of the group runs on it before the next."""
    check = run.checks[unit.test]
    test, draw = unit.test.value, unit.draw
    group = [states[name] for name in unit.methods]
    stages: dict[str, list[StageValues]] = {state.name: [] for state in group}
    passes = {state.name: new_counter() for state in group}
    seconds = dict.fromkeys(stages, 0.0)
    targets: dict[str, np.ndarray] = {}
    archived = draw == 0 or run.settings.archive_all_draws
    for stage_model in check.stage_models(draw):
        run.shared.forget()  # a cascade randomizes one model in place: the same object, another model
        about: dict[str, Any] = {"stage": stage_model.index, "label": stage_model.label}
        if stage_model.targets is not None and archived:
            about["targets"] = path = targets_path(test, draw, stage_model)
            targets[path] = stage_model.targets.cpu().numpy()
        start = first_step(stage_model.model, stage_model.randomized) if check.shares_trained else 0
        forward = run.forward_for(stage_model.model, start)
        for state in group:
            started = time.perf_counter()
            model = forward if state.method.reuses_forward else stage_model.model
            with counting(passes[state.name]):
                raw = stage_maps(run, state, model, stage_model)
            if archived:
                archive_maps(archive, state.name, test, draw, stage_model.archive_name, raw, **about)
            prepared = state.trained if state.baseline else prepare(raw)
            values = StageValues.of(stage_model)
            measures = check.measure(state.raw, raw) if check.needs_raw_maps else None
            values.add(
                compare_prepared(state.trained, prepared),
                compare_prepared(state.trained, prepared[run.partners]),
                prepared,
                measures,
            )
            stages[state.name].append(values)
            seconds[state.name] += time.perf_counter() - started
            run.report_progress(f"{state.name}: {test} {stage_model.label}, draw {draw + 1}", 1)
    run.shared.forget()  # the last stage's model and parts: not needed by the next unit
    return UnitResult(unit, stages, passes, seconds, targets)


def archive_maps(
    archive: ArraySink, method: str, test: str, draw: int, name: str, maps: Tensor, **about: Any
) -> None:
    """A method's maps of one model in a test, under maps/METHOD/TEST[/draw-K]/NAME.npy; ``about``: what
    the manifest says beyond method, test and draw (the stage)."""
    folder = f"maps/{method}/{test}" + (f"/draw-{draw}" if draw else "")
    archive.add_array(
        f"{folder}/{name}.npy", maps.cpu().numpy(), method=method, test=test, draw=draw, **about
    )


def stage_maps(run: AuditRun, state: MethodState, model: nn.Module, at: StageModel | None) -> Tensor:
    """A method's maps on ``model``; ``at``: a stage that may give its own inputs, classes, method settings
    or noise."""
    if run.should_cancel():
        raise AuditCancelled
    method = state.method
    if state.baseline:
        return state.raw
    if at is None:
        return maps(run, method, model, state.noise_seed)
    if at.settings is not None:
        method = create_method(method.name, MethodContext(at.settings, method.context.gradcam))
    if at.smoothing is not None:
        return smoothed_maps(run, method, model, state.noise_seed, at.smoothing)
    return maps(run, method, model, state.noise_seed, at.inputs, at.targets)


def targets_path(test: str, draw: int, stage: StageModel) -> str:
    return f"targets/{test}" + (f"/draw-{draw}" if draw else "") + f"/{stage.archive_name}.npy"


def smoothed_maps(
    run: AuditRun, method: SaliencyMethod, model: nn.Module, noise_seed: int, smoothing: Smoothing
) -> Tensor:
    """The mean of the method's maps over noisy copies of the probes (Hedström et al.'s smooth MPRT);
    the copies come from ``smoothing.seed`` alone, so every stage sees the same ones. A stage costs
    ``smoothing.samples`` times a plain one: a cancel is heard between copies."""
    generator = torch.Generator().manual_seed(smoothing.seed)
    std = noise_std(run.x, smoothing.level)
    targets = run.targets(model)
    total: Tensor | None = None
    for _ in range(smoothing.samples):
        if run.should_cancel():
            raise AuditCancelled
        noise = torch.randn(run.x.shape, generator=generator).to(run.x.device)
        copy_maps = maps(run, method, model, noise_seed, run.x + noise * std, targets)
        total = copy_maps if total is None else total + copy_maps
    assert total is not None
    return total / smoothing.samples


def maps(
    run: AuditRun,
    method: SaliencyMethod,
    model: nn.Module,
    noise_seed: int,
    inputs: Tensor | None = None,
    targets: Tensor | None = None,
) -> Tensor:
    """Maps of every probe, on the device; the same noise seed at every stage, so stages differ only by
    the model (or by the inputs or classes a test's stage gives instead of the probes')."""
    x = run.x if inputs is None else inputs
    targets = run.targets(model, x) if targets is None else targets
    batch = run.settings.batch_size
    parts = method.parts()
    if parts:  # made of parts another method of the stage may have computed (SmoothGrad and VarGrad)
        values = {
            key: run.shared.values(key, compute, method.context, model, x, targets, noise_seed, batch)
            for key, compute in parts.items()
        }
        return torch.cat(
            [
                method.combine({key: part[n] for key, part in values.items()}, x[i : i + batch]).float()
                for n, i in enumerate(range(0, len(x), batch))
            ]
        )
    generator = torch.Generator().manual_seed(noise_seed)
    chunks = [
        method.attribute(model, x[i : i + batch], targets[i : i + batch], generator).float()
        for i in range(0, len(x), batch)
    ]
    return torch.cat(chunks)


@torch.no_grad()
def predictions(model: nn.Module, x: Tensor, settings: AuditSettings) -> Tensor:
    classes = []
    for batch in x.split(settings.batch_size):
        count_passes(len(batch), backward=False)
        classes.append(model(batch).argmax(dim=1))
    return torch.cat(classes)
