"""Runs an audit end to end: load, verify, compute the trained maps, run the plan's units, judge, write.

The same function serves the CLI (in-process) and the Celery worker, which may hand units to other
workers (``UnitExecutor``). ``on_progress`` hears of every finished piece of work; ``should_cancel`` is
asked before every map, so a cancel never tears a stage.
"""

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from torch import nn

from workers.core.audit_settings import AuditSettings, RandomizationTest, TargetPolicy
from workers.core.errors import AuditInputError
from workers.core.report import (
    ARCHIVE_FILE,
    REPORT_FILE,
    AuditReport,
    LayerInfo,
    MethodResult,
    MetricTable,
    TestResult,
)
from workers.engine import units
from workers.engine.archive import MapArchive
from workers.engine.assembly import (
    Calibration,
    memory_use,
    model_notes,
    probe_info,
    stage_zero,
    versions,
)
from workers.engine.check_run import CheckRun, InProcess, Ledger, UnitExecutor
from workers.engine.checks import CheckContext, create_check
from workers.engine.forward_record import ForwardRecord
from workers.engine.methods import SaliencyMethod
from workers.engine.methods.edges import sobel_magnitude
from workers.engine.passes import as_report
from workers.engine.plan import planned_progress
from workers.engine.preparation import (
    Loaded,
    Prepared,
    check_methods,
    load,
    nondeterminism_noted,
    prepare,
)
from workers.engine.similarity import compare_prepared
from workers.engine.similarity import prepare as prepare_maps
from workers.engine.statistics import summarize_all
from workers.engine.training_twins import DataSetup, DataTestInputs, TwinPool
from workers.engine.units import ArraySink, AuditRun, MethodState, noise_seed
from workers.engine.verification import verify_conversion

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


def run_audit(
    model_path: Path,
    probes_path: Path,
    settings: AuditSettings,
    out_dir: Path,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    data_inputs: DataTestInputs | None = None,
    executor: UnitExecutor | None = None,
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
    loaded = load(model_path, probes_path, settings)
    settings = loaded.settings
    conversion = verify_conversion(
        loaded.model,
        loaded.probes.x,
        atol=settings.conversion_atol,
        rtol=settings.conversion_rtol,
        batch_size=settings.batch_size,
    )
    prepared = prepare(loaded)
    model, x, methods = prepared.model, prepared.x, prepared.methods
    data_setup = (
        DataSetup.prepare(
            data_inputs,
            settings,
            model,
            prepared.layers,
            loaded.probes,
            x,
            prepared.classes,
            lambda other: check_methods(methods, other, x),
            loaded.model.artifact.sha256,
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
        archive.add_array("inputs.npy", loaded.probes.x, kind="inputs")
        archive.add_array("targets.npy", prepared.explained.cpu().numpy(), kind="targets")
        cancelled = should_cancel or _never
        pool = TwinPool(data_setup, archive, report_progress, cancelled) if data_setup is not None else None
        run = audit_run(loaded, prepared, cancelled, report_progress, pool)
        total = planned_progress(list(run.checks.values()), methods, pool.planned_units() if pool else 0)
        if pool is not None:
            pool.start()
        with nondeterminism_noted(loaded.device) as nondeterministic:
            results, ledger = _audit_methods(run, executor or InProcess(), archive, prepared)
        if pool is not None:
            pool.skip_untrained()
        report = AuditReport(
            created_at=datetime.now(UTC),
            model=loaded.model.artifact,
            conversion=conversion,
            layers=[
                LayerInfo(index=y.index, name=y.name, kind=y.kind, parameters=y.parameters)
                for y in prepared.layers
            ],
            probes=probe_info(loaded.probes, x, prepared.predicted),
            settings=settings,
            target_policy_note=TARGET_NOTES[settings.target],
            device=str(loaded.device),
            memory=memory_use(loaded.memory, run.record, loaded.device),
            versions=versions(),
            methods=results,
            skipped_methods=prepared.skipped,
            data_randomization=pool.info if pool is not None else None,
            notes=loaded.model.notes + model_notes(model, prepared.layers, settings) + nondeterministic,
            seconds=time.perf_counter() - started,
            image_passes=as_report(_total_passes(prepared.passes, *ledger.passes.values())),
        )
        report_json = report.model_dump_json(indent=2)
        archive.add_bytes(REPORT_FILE, report_json)
        archive.commit()
    _write_atomically(out_dir / REPORT_FILE, report_json)
    return report


def audit_run(
    loaded: Loaded,
    prepared: Prepared,
    should_cancel: Callable[[], bool],
    report_progress: Callable[[str, int], None],
    pool: TwinPool | None = None,
) -> AuditRun:
    """What the units of this audit share; the data test's ``pool`` exists only in the audit's process."""
    settings, model = loaded.settings, prepared.model
    context = CheckContext(
        model,
        prepared.layers,
        settings,
        pool,
        prepared.x,
        prepared.explained,
        prepared.classes,
        prepared.blocks,
    )
    tests = (
        settings.tests if pool is not None else [t for t in settings.tests if t is not RandomizationTest.data]
    )
    return AuditRun(
        settings,
        model,
        prepared.layers,
        prepared.x,
        prepared.fixed_target,
        {method.name: method for method in prepared.methods},
        prepared.partners,
        {test: create_check(test, context) for test in tests},
        loaded.memory,
        ForwardRecord.for_stages(
            model, [list(block.layers) for block in prepared.blocks], loaded.memory.record_bytes
        ),
        should_cancel,
        report_progress,
    )


def _total_passes(*counters: dict[str, int]) -> dict[str, int]:
    return {key: sum(counter[key] for counter in counters) for key in ("forward", "backward")}


def _never() -> bool:
    return False


def _remove_previous_results(out_dir: Path) -> None:
    """A refused or failed run must not leave an earlier run's results looking current."""
    for name in (REPORT_FILE, ARCHIVE_FILE):
        (out_dir / name).unlink(missing_ok=True)


def _audit_methods(
    run: AuditRun, executor: UnitExecutor, archive: MapArchive, prepared: Prepared
) -> tuple[list[MethodResult], Ledger]:
    """Every method's trained maps first, then each test's units; each method's calibration rows last."""
    ledger = Ledger()
    trained_forward = run.forward_for(run.model, len(run.record.trained.steps))
    states = {
        method.name: _trained_state(run, method, trained_forward, archive, ledger)
        for method in prepared.methods
    }
    trained_stages = {
        name: stage_zero(run.partners, state.trained, "trained model") for name, state in states.items()
    }
    tests: dict[str, list[TestResult]] = {name: [] for name in states}
    for check in run.checks.values():
        for name, result in (
            CheckRun(run, check, executor, archive, ledger).results(states, trained_stages).items()
        ):
            tests[name].append(result)
    calibration = Calibration(run.x, prepare_maps(sobel_magnitude(run.x)), run.settings.seed)
    results = []
    for name, state in states.items():
        second = _self_similarity(run, state, ledger)
        results.append(
            calibration.method_result(
                state, trained_stages[name], tests[name], second, ledger.seconds[name], ledger.passes[name]
            )
        )
    return results, ledger


def _trained_state(
    run: AuditRun, method: SaliencyMethod, trained_forward: nn.Module, archive: ArraySink, ledger: Ledger
) -> MethodState:
    with ledger.spending(method.name):
        model = trained_forward if method.reuses_forward else run.model
        raw = units.maps(run, method, model, noise_seed(method, run.settings.seed))
        archive.add_array(f"maps/{method.name}/trained.npy", raw.cpu().numpy(), method=method.name, stage=0)
        state = MethodState.of(method, run.settings.seed, raw)
    run.report_progress(f"{method.name}: trained model", 1)
    return state


def _self_similarity(run: AuditRun, state: MethodState, ledger: Ledger) -> MetricTable | None:
    """A stochastic method's maps drawn again with other noise: how alike two draws of the same model are."""
    if not state.method.stochastic:
        return None
    with ledger.spending(state.name):
        second = units.maps(run, state.method, run.model, state.noise_seed + 1)
        table = summarize_all(compare_prepared(state.trained, prepare_maps(second)))
    run.report_progress(f"{state.name}: noise floor", 1)
    return table


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)
