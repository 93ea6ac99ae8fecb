"""Runs a model parameter randomization audit end to end: load, verify, randomize, compare, judge, write.

The same function serves the CLI (in-process) and the Celery worker. ``on_progress`` hears of every
finished unit of work; ``should_cancel`` is asked between stages, so a cancel never tears a stage.
"""

import os
import platform
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from workers.engine.archive import MapArchive
from workers.engine.artifacts import LoadedModel, detect_format, load_model
from workers.engine.blocks import stage_blocks
from workers.engine.budget import MIB, MemoryPlan, plan_memory
from workers.engine.checks import CheckContext, RetrainFloor, SanityCheck, StageValues, create_check
from workers.engine.data_randomization import DataSetup, DataTestInputs, TwinPool
from workers.engine.errors import AuditCancelled, AuditInputError, MethodUnsupportedError
from workers.engine.gradcam_target import choose_target
from workers.engine.layers import NORMALIZATIONS, Layer, layers_in_forward_order
from workers.engine.methods import MethodContext, SaliencyMethod, create_method, method_class
from workers.engine.methods.edges import sobel_magnitude
from workers.engine.methods.gradients import noise_std
from workers.engine.onnx_import import OnnxGraphModule
from workers.engine.passes import as_report, count_passes, counting, new_counter
from workers.engine.probes import ProbeSet, check_label_range, load_probes
from workers.engine.randomization import Smoothing, StageModel
from workers.engine.report import (
    ARCHIVE_FILE,
    REPORT_FILE,
    AuditReport,
    LayerInfo,
    MemoryUse,
    MethodResult,
    MetricTable,
    ProbeInfo,
    SkippedMethod,
    Stage,
    TestResult,
    Verdict,
    Versions,
)
from workers.engine.reuse import ForwardRecord, StageForward, first_step
from workers.engine.settings import (
    METHOD_NAMES,
    AuditSettings,
    Layout,
    RandomizationTest,
    ReinitScheme,
    TargetPolicy,
)
from workers.engine.shared_parts import SharedParts
from workers.engine.similarity import PreparedMaps, compare_prepared, prepare
from workers.engine.statistics import summarize, summarize_all
from workers.engine.verification import verify_conversion

UNDECIDED = ("interval", "draws_disagree")  # causes that more draws may settle

TARGET_NOTES = {
    TargetPolicy.predicted: "Maps explain the trained model's predicted class, held fixed at every stage.",
    TargetPolicy.label: "Maps explain the probe labels supplied with the images, at every stage.",
    TargetPolicy.randomized_argmax: "Maps explain the argmax of the model at each stage, as the original "
    "code did: the explained class changes as layers are randomized.",
}


@dataclass(frozen=True)
class Progress:
    phase: str
    done: int
    total: int


@dataclass
class _Run:
    """What every method's pass over the stages shares."""

    settings: AuditSettings
    model: nn.Module
    layers: list[Layer]
    x: Tensor
    fixed_target: Tensor | None
    archive: MapArchive
    report_progress: Callable[[str, int], None]
    should_cancel: Callable[[], bool]
    edge_maps: PreparedMaps  # the model-free Sobel baseline every method is compared with
    partners: np.ndarray  # image i's cross-image floor compares it with image partners[i]
    checks: list[SanityCheck]  # the requested randomization tests, in the order requested
    memory: MemoryPlan
    record: ForwardRecord  # the trained model's forward passes, for stages to start from
    shared: SharedParts = field(default_factory=SharedParts)  # parts of maps several methods are made of
    passes: dict[str, dict[str, int]] = field(default_factory=dict)  # image-passes by method
    _masks: dict[int, PreparedMaps] = field(default_factory=dict)

    def targets(self, model: nn.Module, inputs: Tensor | None = None) -> Tensor:
        x = self.x if inputs is None else inputs
        return self.fixed_target if self.fixed_target is not None else predictions(model, x, self.settings)

    def random_masks(self, channels: int) -> PreparedMaps:
        """The calibration row's random masks, of the maps' shape; the same for every method."""
        if channels not in self._masks:
            shape = (len(self.x), channels, *self.x.shape[2:])
            masks = np.random.default_rng([self.settings.seed, 0xCA11]).random(shape, dtype=np.float32)
            self._masks[channels] = prepare(torch.from_numpy(masks).to(self.x.device))
        return self._masks[channels]

    def forward_for(self, model: nn.Module, start: int, recording: bool = False) -> nn.Module:
        """The model that methods reusing forward work run on at a stage whose steps before ``start``
        are as trained (0: none are)."""
        if start == 0 or not isinstance(model, OnnxGraphModule):
            return model
        return StageForward(model, self.record, start, self.memory.memo_bytes, recording)


@dataclass
class _MethodState:
    """One method's trained maps, which every stage of every test is compared with."""

    method: SaliencyMethod
    noise_seed: int
    # the maps as the method gave them, kept only where a requested test measures raw maps (their memory)
    trained_raw: Tensor | None
    trained: PreparedMaps
    trained_stage: Stage
    channels: int  # of the maps (GradCAM's have one)
    fixed_maps: Tensor | None  # a baseline's maps, which need no model: the same at every stage
    seconds: float  # time spent on this method's maps and comparisons so far

    @property
    def name(self) -> str:
        return self.method.name


def run_audit(
    model_path: Path,
    probes_path: Path,
    settings: AuditSettings,
    out_dir: Path,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    data_inputs: DataTestInputs | None = None,
) -> AuditReport:
    """Audit ``model_path`` on ``probes_path``; write report.json and maps.zip into ``out_dir``.

    ``data_inputs`` (a random-label twin, or training data to train one) is needed exactly when the
    settings ask for the data randomization test.
    """
    started = time.perf_counter()
    _remove_previous_results(out_dir)
    if (RandomizationTest.data in settings.tests) != (data_inputs is not None):
        raise AuditInputError(
            "the data randomization test needs a random-label twin or training data, and those are used "
            "only by the data test: request test 'data' together with one of them"
        )
    device = resolve_device(settings.device)
    loaded, probes = _load_inputs(model_path, probes_path, settings)
    memory = plan_memory(
        loaded.module.eval().requires_grad_(False), torch.from_numpy(probes.x), settings, device
    )
    settings = memory.applied(settings)
    conversion = verify_conversion(
        loaded,
        probes.x,
        atol=settings.conversion_atol,
        rtol=settings.conversion_rtol,
        batch_size=settings.batch_size,
    )
    _use_exact_kernels(device)
    model = loaded.module.to(device)
    x = torch.from_numpy(probes.x).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    layers = layers_in_forward_order(model, x[:1], loaded.module.layer_names)
    with counting(new_counter()) as predicting:
        predicted = predictions(model, x, settings)
    with torch.no_grad():
        classes = model(x[:1]).shape[1]
    fixed_target = _fixed_target(settings, probes, predicted, classes)
    methods, skipped = _create_methods(settings, model, x)
    partners = cross_image_partners(predicted.cpu().numpy(), settings.seed)
    data_setup = (
        DataSetup.prepare(
            data_inputs,
            settings,
            model,
            layers,
            probes,
            x,
            classes,
            lambda other: _check_methods(methods, other, x),
            loaded.artifact.sha256,
        )
        if data_inputs is not None
        else None
    )
    total, done = 0, 0

    def report_progress(phase: str, advance: int = 1) -> None:
        nonlocal done
        done += advance
        if on_progress is not None:
            on_progress(Progress(phase, done, total))

    out_dir.mkdir(parents=True, exist_ok=True)
    with MapArchive(out_dir / ARCHIVE_FILE) as archive:
        archive.add_array("inputs.npy", probes.x, kind="inputs")
        edges = prepare(sobel_magnitude(x))
        cancelled = should_cancel or _never
        pool = TwinPool(data_setup, archive, report_progress, cancelled) if data_setup is not None else None
        explained = fixed_target if fixed_target is not None else predicted
        archive.add_array("targets.npy", explained.cpu().numpy(), kind="targets")  # what trained maps explain
        blocks = stage_blocks(model, layers, settings)
        context = CheckContext(model, layers, settings, pool, x, explained, classes, blocks)
        checks = [create_check(test, context) for test in settings.tests]
        total = _planned_units(checks, methods, pool)
        if pool is not None:
            pool.start()
        run = _Run(
            settings,
            model,
            layers,
            x,
            fixed_target,
            archive,
            report_progress,
            cancelled,
            edges,
            partners,
            checks,
            memory,
            ForwardRecord.for_stages(model, [list(block.layers) for block in blocks], memory.record_bytes),
        )
        with nondeterminism_noted(device) as nondeterministic:
            results = _audit_methods(run, methods)
        if pool is not None:
            pool.skip_untrained()
        report = AuditReport(
            created_at=datetime.now(UTC),
            model=loaded.artifact,
            conversion=conversion,
            layers=[
                LayerInfo(index=y.index, name=y.name, kind=y.kind, parameters=y.parameters) for y in layers
            ],
            probes=_probe_info(probes, x, predicted),
            settings=settings,
            target_policy_note=TARGET_NOTES[settings.target],
            device=str(device),
            memory=_memory_use(memory, run.record, device),
            versions=_versions(),
            methods=results,
            skipped_methods=skipped,
            data_randomization=pool.info if pool is not None else None,
            notes=loaded.notes
            + _constant_notes(model)
            + _normalization_notes(model, layers, settings)
            + nondeterministic,
            seconds=time.perf_counter() - started,
            image_passes=as_report(_total_passes(predicting, *run.passes.values())),
        )
        report_json = report.model_dump_json(indent=2)
        archive.add_bytes(REPORT_FILE, report_json)
        archive.commit()
    _write_atomically(out_dir / REPORT_FILE, report_json)
    return report


def _archive_targets(archive: MapArchive, test: str, draw: int, stage: StageModel) -> str:
    """The classes a stage's maps explain where they are not the trained maps' (random logit's other
    classes), once for every method; the path its maps' manifest entries name."""
    assert stage.targets is not None
    path = f"targets/{test}" + (f"/draw-{draw}" if draw else "") + f"/{stage.archive_name}.npy"
    archive.add_array(path, stage.targets.cpu().numpy(), kind="targets", test=test, draw=draw)
    return path


def _total_passes(*counters: dict[str, int]) -> dict[str, int]:
    return {key: sum(counter[key] for counter in counters) for key in ("forward", "backward")}


def _planned_units(checks: list[SanityCheck], methods: list[SaliencyMethod], pool: TwinPool | None) -> int:
    """Progress units of the most work the audit may do, so the total never moves.

    Draws an undecided verdict may add (and the twins they train) are counted from the start; what a
    verdict settled early leaves undone is skipped, so progress only goes forward.
    """
    per_method = sum(_check_units(check, check.max_draws()) for check in checks)
    training = pool.planned_units() if pool is not None else 0
    return training + sum(1 + m.stochastic + per_method for m in methods)


def _check_units(check: SanityCheck, draws: int) -> int:
    return draws * check.stage_count() + check.reference_count(draws)


def _never() -> bool:
    return False


def _load_inputs(
    model_path: Path, probes_path: Path, settings: AuditSettings
) -> tuple[LoadedModel, ProbeSet]:
    """ONNX declares its input shape, so probes are checked against it; the others need a probe batch."""
    if detect_format(model_path) == "onnx":
        loaded = load_model(model_path, output=settings.output, layout=settings.model_layout)
        probes = load_probes(
            probes_path,
            settings.preprocessing,
            loaded.module.input_shape,
            settings.max_images,
            model_layout=Layout(loaded.module.input_layout),
        )
        return loaded, probes
    stated = settings.model_layout  # a program's layout shows only once it is lowered: stated, or NCHW
    layout = stated or Layout.nchw
    probes = load_probes(probes_path, settings.preprocessing, None, settings.max_images, model_layout=layout)
    example = probes.x[: min(2, len(probes.x))]
    model = load_model(model_path, example_input=example, output=settings.output, layout=stated)
    return model, probes


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise AuditInputError(
            f"device {requested!r} is not a torch device; use 'auto', 'cpu' or 'cuda[:N]'"
        ) from None
    if device.type not in ("cpu", "cuda"):
        raise AuditInputError(f"device {requested!r} is not supported; use 'auto', 'cpu' or 'cuda[:N]'")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AuditInputError(f"device {requested!r} was requested but CUDA is not available here")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise AuditInputError(
            f"device {requested!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return device


def _use_exact_kernels(device: torch.device) -> None:
    """The conversion check ran in float32 on the CPU: the maps must come from the same arithmetic.

    TF32 (on by default for cuDNN convolutions on Ampere and newer) would compute a numerically
    different model than the verified one, and nondeterministic kernels would break reproducibility.
    """
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


NONDETERMINISTIC = " does not have a deterministic implementation"  # torch's alert, after the op's name


@contextmanager
def nondeterminism_noted(device: torch.device) -> Iterator[list[str]]:
    """On a GPU, collect the ops that ran without a deterministic kernel (torch warns of each, with
    ``warn_only``): the report names them, since results through them may differ in the last bits from
    run to run. Every other warning is passed on."""
    notes: list[str] = []
    if device.type != "cuda":
        yield notes
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield notes
    ops = sorted(
        {str(w.message).split(NONDETERMINISTIC)[0] for w in caught if NONDETERMINISTIC in str(w.message)}
    )
    for other in (w for w in caught if NONDETERMINISTIC not in str(w.message)):
        warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
    if ops:
        notes.append(
            f"Not bit-reproducible on this GPU: {', '.join(ops)} ran without a deterministic CUDA kernel; "
            "maps through them may differ in the last bits between runs (every other op is deterministic)."
        )


def _memory_use(plan: MemoryPlan, record: ForwardRecord, device: torch.device) -> MemoryUse:
    peak = torch.cuda.max_memory_allocated(device) / MIB if device.type == "cuda" else None
    return MemoryUse(
        budget_mib=plan.budget_bytes / MIB,
        image_forward_mib=plan.image_bytes / MIB,
        batch_size=plan.batch_size,
        internal_batch_size=plan.internal_batch_size,
        recorded_forward_mib=record.used_bytes / MIB,
        device_peak_mib=peak,
    )


def _remove_previous_results(out_dir: Path) -> None:
    """A refused or failed run must not leave an earlier run's results looking current."""
    for name in (REPORT_FILE, ARCHIVE_FILE):
        (out_dir / name).unlink(missing_ok=True)


def cross_image_partners(classes: np.ndarray, seed: int) -> np.ndarray:
    """For each image, another image to compare with, of a different class where one exists.

    The partner comes from a seeded shuffle, not from neighbours in the given order: probe folders are
    sorted by class, and neighbours of one class share more structure, which would raise the floor.
    """
    count = len(classes)
    order = np.random.default_rng([seed, 0xF1002]).permutation(count)
    partners = np.empty(count, dtype=np.int64)
    for position, image in enumerate(order):
        candidates = order[np.roll(np.arange(count), -position - 1)[:-1]]
        other_class = candidates[classes[candidates] != classes[image]]
        partners[image] = other_class[0] if len(other_class) else candidates[0]
    return partners


def _normalization_notes(model: nn.Module, layers: list[Layer], settings: AuditSettings) -> list[str]:
    """Say how normalization layers were re-initialized: not by their own initializer (the identity)."""
    normalizations = [
        layer.name for layer in layers if isinstance(model.get_submodule(layer.path), NORMALIZATIONS)
    ]
    if not normalizations or settings.reinit is not ReinitScheme.default:
        return []
    return [
        f"{len(normalizations)} normalization layer(s) ({', '.join(normalizations[:10])}"
        f"{' ...' if len(normalizations) > 10 else ''}) are re-initialized with scale ~ U(0, 1) and shift 0: "
        "their own initializer (scale 1, shift 0) would make a stage that only removes normalization"
    ]


def _constant_notes(model: nn.Module) -> list[str]:
    """Float constants outside the layers are never randomized: say so, since they may be learned."""
    owners = dict(model.named_modules())
    constants = [
        name
        for name, buffer in model.named_buffers()
        if buffer.is_floating_point()
        and buffer.numel() > 1
        and not any(True for _ in owners[name.rpartition(".")[0]].parameters(recurse=False))
    ]
    if not constants:
        return []
    return [
        f"{len(constants)} float constant tensor(s) outside the layers are kept as trained at every stage "
        f"(not randomized): {', '.join(constants[:10])}{' ...' if len(constants) > 10 else ''}"
    ]


@torch.no_grad()
def predictions(model: nn.Module, x: Tensor, settings: AuditSettings) -> Tensor:
    classes = []
    for batch in x.split(settings.batch_size):
        count_passes(len(batch), backward=False)
        classes.append(model(batch).argmax(dim=1))
    return torch.cat(classes)


def _fixed_target(
    settings: AuditSettings, probes: ProbeSet, predicted: Tensor, classes: int
) -> Tensor | None:
    if settings.target is TargetPolicy.predicted:
        return predicted
    if settings.target is TargetPolicy.randomized_argmax:
        return None
    if probes.labels is None:
        raise AuditInputError(
            "target policy 'label' needs labelled probes (a 'y' array or class sub-folders)"
        )
    check_label_range(probes.labels, classes, f"{probes.source} (probes)")
    return torch.from_numpy(probes.labels).to(predicted.device)


def _create_methods(
    settings: AuditSettings, model: nn.Module, x: Tensor
) -> tuple[list[SaliencyMethod], list[SkippedMethod]]:
    """Build the methods. Named ones refuse up front, naming every one that cannot run correctly; of the
    default set, those not defined on the model are skipped with their reason."""
    names = settings.methods or list(METHOD_NAMES)
    reads_layer = any(method_class(name).reads_gradcam_layer for name in names)
    gradcam = choose_target(model, x[:1], settings.gradcam_layer) if reads_layer else None
    context = MethodContext(settings, gradcam)
    methods = [create_method(name, context) for name in names]
    if settings.methods is not None:
        _check_methods(methods, model, x)
        return methods, []
    kept, skipped = [], []
    for method in methods:
        try:
            method.check_supported(model, x[:1])
            kept.append(method)
        except MethodUnsupportedError as error:
            skipped.append(SkippedMethod(name=method.name, reason=str(error)))
    return kept, skipped


def _check_methods(methods: list[SaliencyMethod], model: nn.Module, x: Tensor) -> None:
    """Refuse up front, naming every method that cannot give a correct map on ``model``."""
    problems = []
    for method in methods:
        try:
            method.check_supported(model, x[:1])
        except MethodUnsupportedError as error:
            problems.append(str(error))
    if problems:
        raise MethodUnsupportedError("; ".join(problems))


def _audit_methods(run: _Run, methods: list[SaliencyMethod]) -> list[MethodResult]:
    """Stage-major: each stage's model is built once and every method runs on it before the next."""
    trained_forward = run.forward_for(run.model, len(run.record.trained.steps), recording=True)
    states = [_trained_state(run, method, trained_forward) for method in methods]
    tests: dict[str, list[TestResult]] = {state.name: [] for state in states}
    for check in run.checks:
        for name, result in _run_check(run, check, states).items():
            tests[name].append(result)
    return [_method_result(run, state, tests[state.name]) for state in states]


def _trained_state(run: _Run, method: SaliencyMethod, trained_forward: nn.Module) -> _MethodState:
    started = time.perf_counter()
    # noise depends on the method (or its family), not its place in the list
    method_key = zlib.crc32(method.noise_key.encode())
    noise_seed = int(np.random.SeedSequence([run.settings.seed, method_key]).generate_state(1)[0])
    model = trained_forward if method.reuses_forward else run.model
    trained_maps = _maps(run, method, model, noise_seed)
    run.archive.add_array(
        f"maps/{method.name}/trained.npy", _array(trained_maps), method=method.name, stage=0
    )
    trained = prepare(trained_maps)
    run.report_progress(f"{method.name}: trained model")
    trained_stage = _stage_zero(run, trained, "trained model")
    return _MethodState(
        method,
        noise_seed,
        trained_maps if any(check.needs_raw_maps for check in run.checks) else None,
        trained,
        trained_stage,
        trained_maps.shape[1],
        None if method.uses_model else trained_maps,
        time.perf_counter() - started,
    )


def _stage_zero(run: _Run, trained: PreparedMaps, label: str, note: str | None = None) -> Stage:
    return Stage(
        index=0,
        label=label,
        randomized_layers=[],
        similarity=summarize_all(compare_prepared(trained, trained)),
        cross_image_floor=summarize_all(compare_prepared(trained, trained[run.partners])),
        degenerate_maps=int(trained.constant.sum()),
        non_finite_maps=int(trained.non_finite.sum()),
        note=note,
    )


def _method_result(run: _Run, state: _MethodState, tests: list[TestResult]) -> MethodResult:
    started = time.perf_counter()
    method, trained = state.method, state.trained
    calibration = summarize_all(compare_prepared(trained, run.random_masks(state.channels)))
    self_similarity = _self_similarity(run, method, trained, state.noise_seed)
    edge_similarity = summarize_all(compare_prepared(trained, run.edge_maps))
    return MethodResult(
        name=method.name,
        baseline=not method.uses_model,
        stochastic=method.stochastic,
        parameters=method.parameters(),
        random_mask_calibration=calibration,
        self_similarity=self_similarity,
        edge_detector_similarity=edge_similarity,
        degenerate_trained_maps=state.trained_stage.degenerate_maps,
        non_finite_trained_maps=state.trained_stage.non_finite_maps,
        tests=tests,
        seconds=state.seconds + time.perf_counter() - started,
        image_passes=as_report(run.passes.get(method.name, new_counter())),
    )


def _run_check(run: _Run, check: SanityCheck, states: list[_MethodState]) -> dict[str, TestResult]:
    """Every draw's stages against each method's trained maps; the test judges each method's table.

    A method whose verdict more draws may settle gets them; the others are done.
    """
    test = check.test.value

    def raw_maps_of(
        state: _MethodState, model: nn.Module, name: str, draw: int, at: StageModel | None, **about: object
    ) -> Tensor:
        """``about``: what the manifest says of the array beyond method, test and draw (the stage)."""
        if run.should_cancel():
            raise AuditCancelled
        method, fixed = state.method, state.fixed_maps
        if fixed is not None:
            maps = fixed
        elif at is None:
            maps = _maps(run, method, model, state.noise_seed)
        else:  # ``at``: a stage that may give its own inputs, classes, method settings or noise
            if at.settings is not None:
                method = create_method(method.name, MethodContext(at.settings, method.context.gradcam))
            if at.smoothing is not None:
                maps = _smoothed_maps(run, method, model, state.noise_seed, at.smoothing)
            else:
                maps = _maps(run, method, model, state.noise_seed, at.inputs, at.targets)
        if draw == 0 or run.settings.archive_all_draws:
            folder = f"maps/{method.name}/{test}" + (f"/draw-{draw}" if draw else "")
            path = f"{folder}/{name}.npy"
            run.archive.add_array(path, _array(maps), method=method.name, test=test, draw=draw, **about)
        return maps

    def maps_of(state: _MethodState, model: nn.Module, name: str, draw: int) -> PreparedMaps:
        maps = raw_maps_of(state, model, name, draw, None)
        return prepare(maps) if state.fixed_maps is None else state.trained

    originals, reference = states, check.reference()
    if reference is not None:  # the check's own reference maps replace the trained ones in its comparisons
        states = [_referenced(run, state, reference, raw_maps_of, check.needs_raw_maps) for state in states]
    stages: dict[str, dict[int, StageValues]] = {state.name: {} for state in states}

    def add_draws(pending: list[_MethodState], first: int, last: int) -> None:
        for draw in range(first, last):
            for stage_model in check.stage_models(draw):
                run.shared.forget()  # a cascade randomizes one model in place: the same object, another model
                about = {"stage": stage_model.index, "label": stage_model.label}
                if stage_model.targets is not None and (draw == 0 or run.settings.archive_all_draws):
                    about["targets"] = _archive_targets(run.archive, test, draw, stage_model)
                start = first_step(stage_model.model, stage_model.randomized) if check.shares_trained else 0
                forward = run.forward_for(stage_model.model, start)
                for state in pending:
                    started = time.perf_counter()
                    model = forward if state.method.reuses_forward else stage_model.model
                    raw = raw_maps_of(state, model, stage_model.archive_name, draw, stage_model, **about)
                    prepared = prepare(raw) if state.fixed_maps is None else state.trained
                    values = stages[state.name].setdefault(stage_model.index, StageValues.of(stage_model))
                    similarity = compare_prepared(state.trained, prepared)
                    cross = compare_prepared(state.trained, prepared[run.partners])
                    measures = _measures(check, state, raw)
                    values.add(similarity, cross, prepared, measures)
                    state.seconds += time.perf_counter() - started
                    run.report_progress(f"{state.name}: {test} {stage_model.label}, draw {draw + 1}")

    memo: dict[tuple[str, str, int], PreparedMaps] = {}

    def references_of(state: _MethodState) -> Callable[[nn.Module, str, int], PreparedMaps]:
        def reference_maps(model: nn.Module, name: str, index: int) -> PreparedMaps:
            """Reference models (controls) are compared again after every extension: their maps once."""
            if (state.name, name, index) not in memo:
                memo[state.name, name, index] = maps_of(state, model, name, index)
                run.report_progress(f"{state.name}: {test} {name.replace('_', ' ')} {index + 1}")
            return memo[state.name, name, index]

        return reference_maps

    def references_first(pending: list[_MethodState], draws: int) -> None:
        """The reference models' maps model by model, every method on each: parts shared between methods
        (SmoothGrad's and VarGrad's) are computed once per model."""
        for model, name, index in check.reference_models(draws):
            for state in pending:
                references_of(state)(model, name, index)

    def judged(state: _MethodState, draws: int) -> tuple[Verdict | None, RetrainFloor | None]:
        floor = check.retrain_floor(state.trained, references_of(state), draws)
        return _judge(check, state.method, state.trained_stage, stages[state.name], floor), floor

    draws = check.draws()
    add_draws(states, 0, draws)
    references_first(states, draws)
    outcomes = {state.name: (*judged(state, draws), draws) for state in states}
    pending = [state for state in states if _undecided(outcomes[state.name][0])]
    while pending and draws < check.max_draws():
        more = min(check.draws(), check.max_draws() - draws)
        add_draws(pending, draws, draws + more)
        draws += more
        references_first(pending, draws)
        outcomes.update({state.name: (*judged(state, draws), draws) for state in pending})
        pending = [state for state in pending if _undecided(outcomes[state.name][0])]
    run.shared.forget()  # the last stage's model and parts: not needed by the next check
    for original, state in zip(originals, states, strict=True):
        original.seconds = state.seconds
    most = _check_units(check, check.max_draws())
    unused = sum(most - _check_units(check, used) for *_, used in outcomes.values())
    if unused:
        run.report_progress(f"{test}: every verdict settled", unused)
    return {
        state.name: TestResult(
            test=check.test,
            order=check.order(),
            draws=outcomes[state.name][2],
            stages=[
                state.trained_stage,
                *(_summarized(values) for _, values in sorted(stages[state.name].items())),
            ],
            retrain_floor=floor.similarity if (floor := outcomes[state.name][1]) is not None else None,
            verdict=outcomes[state.name][0],
        )
        for state in states
    }


def _referenced(
    run: _Run,
    state: _MethodState,
    reference: StageModel,
    raw_maps_of: Callable[..., Tensor],
    keep_raw: bool,
) -> _MethodState:
    """A copy of ``state`` whose reference maps are ``reference``'s (a baseline's stay as they are)."""
    if state.fixed_maps is not None:  # a baseline's maps are the same for every model: nothing to make
        run.report_progress(f"{state.name}: {reference.label}")
        return replace(state)
    started = time.perf_counter()
    raw = raw_maps_of(state, reference.model, reference.archive_name, 0, reference, stage=0)
    prepared = prepare(raw)
    run.report_progress(f"{state.name}: {reference.label}")
    stage = _stage_zero(run, prepared, reference.label, reference.note)
    seconds = state.seconds + time.perf_counter() - started
    kept = raw if keep_raw else None
    return replace(state, trained_raw=kept, trained=prepared, trained_stage=stage, seconds=seconds)


def _measures(check: SanityCheck, state: _MethodState, raw: Tensor) -> dict[str, np.ndarray] | None:
    """The check's own per-image measures of the raw maps, where it has any."""
    if not check.needs_raw_maps:
        return None
    assert state.trained_raw is not None  # kept for every method when a requested check needs raw maps
    return check.measure(state.trained_raw, raw)


def _smoothed_maps(
    run: _Run, method: SaliencyMethod, model: nn.Module, noise_seed: int, smoothing: Smoothing
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
        maps = _maps(run, method, model, noise_seed, run.x + noise * std, targets)
        total = maps if total is None else total + maps
    assert total is not None
    return total / smoothing.samples


def _undecided(verdict: Verdict | None) -> bool:
    return verdict is not None and verdict.cause in UNDECIDED


def _judge(
    check: SanityCheck,
    method: SaliencyMethod,
    trained_stage: Stage,
    stages: dict[int, StageValues],
    retrain_floor: RetrainFloor | None,
) -> Verdict | None:
    """Baselines need no model: they are compared, never judged."""
    if not method.uses_model:
        return None
    return check.judge(trained_stage, [stages[index] for index in sorted(stages)], retrain_floor)


def _summarized(values: StageValues) -> Stage:
    return Stage(
        index=values.index,
        label=values.label,
        randomized_layers=[layer.name for layer in values.randomized],
        similarity={metric: summarize(np.stack(tables)) for metric, tables in values.similarity.items()},
        cross_image_floor={metric: summarize(np.stack(t)) for metric, t in values.cross_image.items()},
        degenerate_maps=values.degenerate,
        non_finite_maps=values.non_finite,
        measures={name: summarize(np.stack(tables)) for name, tables in values.measures.items()},
        note=values.note,
    )


def _maps(
    run: _Run,
    method: SaliencyMethod,
    model: nn.Module,
    noise_seed: int,
    inputs: Tensor | None = None,
    targets: Tensor | None = None,
) -> Tensor:
    """Maps of every probe, on the device; the same noise seed at every stage, so stages differ only by
    the model (or by the inputs or classes a test's stage gives instead of the probes')."""
    with counting(run.passes.setdefault(method.name, new_counter())):
        return _counted_maps(run, method, model, noise_seed, inputs, targets)


def _counted_maps(
    run: _Run,
    method: SaliencyMethod,
    model: nn.Module,
    noise_seed: int,
    inputs: Tensor | None,
    targets: Tensor | None,
) -> Tensor:
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


def _array(maps: Tensor) -> np.ndarray:
    return maps.cpu().numpy()


def _self_similarity(
    run: _Run, method: SaliencyMethod, trained: PreparedMaps, noise_seed: int
) -> MetricTable | None:
    if not method.stochastic:
        return None
    second = _maps(run, method, run.model, noise_seed + 1)
    run.report_progress(f"{method.name}: noise floor")
    return summarize_all(compare_prepared(trained, prepare(second)))


def _probe_info(probes: ProbeSet, x: Tensor, predicted: Tensor) -> ProbeInfo:
    accuracy = None
    if probes.labels is not None:
        accuracy = float((predicted.cpu().numpy() == probes.labels).mean())
    return ProbeInfo(
        filename=probes.source,
        sha256=probes.sha256,
        count=len(probes.x),
        shape=list(x.shape),
        labels=probes.labels is not None,
        trained_accuracy=accuracy,
    )


def _versions() -> Versions:
    return Versions(
        engine=metadata.version("saliency-audit"),
        python=platform.python_version(),
        torch=torch.__version__,
        captum=metadata.version("captum"),
        onnx=metadata.version("onnx"),
        onnxruntime=metadata.version("onnxruntime"),
        numpy=np.__version__,
    )


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)
