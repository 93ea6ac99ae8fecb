"""One audit over many Celery workers (docs/decisions/0026).

The worker that runs a job (the coordinator) computes the trained maps, publishes what units need to the
object store, plans each round of units in the job store and sends one Celery message per unit. Any
worker that gets a message claims its unit, runs it (``workers.engine.units.run_unit``) and stores its
result; the coordinator claims units too, so no unit waits for a free worker, and one worker alone runs
the whole plan. A unit whose holder stops renewing its lease is claimed again; results are read once, in
plan order, so the report is the same number for number however many workers ran it (on the same kind
of CPU or GPU and the same number of threads: float sums depend on both).
"""

import io
import json
import logging
import pickle
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from celery import Celery

from workers.core.audit_settings import AuditSettings, RandomizationTest
from workers.core.config import Settings
from workers.core.errors import AuditCancelled
from workers.core.requests import AuditRequest
from workers.core.storage import Storage
from workers.core.store.jobs import JobStore
from workers.core.store.states import JobState
from workers.core.store.units import PlanId, UnitStore, holder_token
from workers.engine.archive import MapArchive
from workers.engine.audit import audit_run
from workers.engine.check_run import InProcess
from workers.engine.plan import Unit
from workers.engine.preparation import load, prepare
from workers.engine.units import AuditRun, MethodState, UnitResult, run_unit
from workers.worker.job_runner import Throttle, fetch_inputs
from workers.worker.lease import Lease

log = logging.getLogger(__name__)

POLL_S = 0.2  # how often the coordinator looks for finished or lapsed units when it has none to run
# the data test's models (trained twins) exist only in the job's own process
LOCAL_ONLY = frozenset({RandomizationTest.data})


class UnitFiles:
    """Where one attempt's units find their inputs and leave their results in the object store."""

    def __init__(self, storage: Storage, plan: PlanId, work: Path) -> None:
        self.storage, self.prefix, self.work = storage, f"{units_prefix(plan.job_id)}{plan.attempt}", work
        work.mkdir(parents=True, exist_ok=True)

    def put(self, name: str, data: bytes) -> None:
        path = self.work / f"put-{name.replace('/', '_')}"
        path.write_bytes(data)
        self.storage.objects.put(f"{self.prefix}/{name}", path)

    def get(self, name: str) -> bytes:
        path = self.work / f"get-{name.replace('/', '_')}"
        self.storage.objects.fetch(f"{self.prefix}/{name}", path)
        try:
            return path.read_bytes()
        finally:
            path.unlink(missing_ok=True)

    def store_result(self, result: UnitResult, part: Path) -> None:
        """The unit's numbers (pickled: written and read only by this service's workers) and its maps;
        ``part`` is moved away."""
        self.put(f"results/{result.unit.key}.pickle", pickle.dumps(result))
        self.storage.objects.put(f"{self.prefix}/results/{result.unit.key}.zip", part)

    def load_result(self, key: str) -> UnitResult:
        return pickle.loads(self.get(f"results/{key}.pickle"))

    def load_maps(self, key: str) -> Path:
        target = self.work / f"{key}.zip"
        self.storage.objects.fetch(f"{self.prefix}/results/{key}.zip", target)
        return target


def units_prefix(job_id: str) -> str:
    """Every attempt's unit files of a job, in the object store."""
    return f"units/{job_id}/"


def _array_bytes(tensor: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, tensor.cpu().numpy(), allow_pickle=False)
    return buffer.getvalue()


class FanOut:
    """The coordinator's side: a ``UnitExecutor`` that shares each round of units with other workers."""

    def __init__(
        self,
        plan: PlanId,
        units: UnitStore,
        files: UnitFiles,
        send: Callable[[str], None],
        lease_s: float,
    ) -> None:
        self.plan, self.units, self.files, self.send, self.lease_s = plan, units, files, send, lease_s
        self.holder = holder_token("coordinator")
        self._published: set[RandomizationTest] = set()  # tests whose inputs helpers can read
        self._maps: dict[int, tuple[str, torch.Tensor]] = {}  # published maps by tensor, held so ids stay

    def run(
        self, run: AuditRun, units: list[Unit], states: dict[str, MethodState], archive: MapArchive
    ) -> Iterator[UnitResult]:
        if not units or units[0].test in LOCAL_ONLY:
            yield from InProcess().run(run, units, states, archive)
            return
        self._publish(run, units[0].test, states)
        keys = [unit.key for unit in units]
        self.units.add(self.plan, keys)
        self._announce(keys)
        here = self._run_all(run, {unit.key: unit for unit in units}, states)
        for unit in units:
            if unit.key in here:
                result, part = here[unit.key]
            else:  # a unit another worker ran: its progress shows now
                result, part = self.files.load_result(unit.key), self.files.load_maps(unit.key)
                done = sum(len(stages) for stages in result.stages.values())
                run.report_progress(f"{unit.test.value}: draw {unit.draw + 1} by another worker", done)
            archive.add_archive(part)
            part.unlink()
            yield result

    def _announce(self, keys: list[str]) -> None:
        """One message per unit; a broker that cannot take them only means this worker runs them all."""
        try:
            for key in keys:
                self.send(key)
        except Exception as error:  # kombu raises transport-specific errors
            log.warning("units not announced to other workers (%s): running them here", type(error).__name__)

    def _run_all(
        self, run: AuditRun, units: dict[str, Unit], states: dict[str, MethodState]
    ) -> dict[str, tuple[UnitResult, Path]]:
        """Claim and run units here until every one is done, here or elsewhere."""
        here: dict[str, tuple[UnitResult, Path]] = {}
        while True:
            done = self.units.done(self.plan, list(units))
            left = [key for key in units if key not in done]
            if not left:
                return here
            key = self.units.claim(self.plan, left, self.holder, self.lease_s)
            if key is not None:
                here[key] = self._run_here(run, units[key], states)
            elif run.should_cancel():
                raise AuditCancelled
            else:
                time.sleep(POLL_S)

    def _run_here(self, run: AuditRun, unit: Unit, states: dict[str, MethodState]) -> tuple[UnitResult, Path]:
        """The unit's result and a copy of its maps kept here (the stored one may be moved away)."""
        part, kept = self.files.work / f"{unit.key}.zip", self.files.work / f"{unit.key}.kept.zip"
        try:
            with Lease(self._renewal(unit.key), self.lease_s, f"unit {unit.key}"):
                with MapArchive(part) as archive:
                    result = run_unit(run, unit, states, archive)
                    archive.commit()
                shutil.copyfile(part, kept)
                self.files.store_result(result, part)
        except BaseException:
            self.units.release(self.plan, unit.key, self.holder)
            raise
        self.units.finish(self.plan, unit.key, self.holder)
        return result, kept

    def _renewal(self, key: str) -> Callable[[], bool]:
        return partial(self.units.heartbeat, self.plan, key, self.holder)

    def _publish(self, run: AuditRun, test: RandomizationTest, states: dict[str, MethodState]) -> None:
        """The applied settings, and which maps each method's stages are compared with in ``test`` (once per
        test: its later rounds compare with the same): the trained maps are published once for every
        test, a test's own reference maps once more."""
        if test in self._published:
            return
        if not self._published:
            self.files.put("inputs/settings.json", run.settings.model_dump_json().encode())
        index = {}
        for name, state in states.items():
            if id(state.raw) not in self._maps:
                path = f"inputs/maps/{name}-{len(self._maps)}.npy"
                self.files.put(path, _array_bytes(state.raw))
                self._maps[id(state.raw)] = (path, state.raw)
            index[name] = self._maps[id(state.raw)][0]
        self.files.put(f"inputs/{test.value}.json", json.dumps(index).encode())
        self._published.add(test)

    def close(self) -> None:
        """The job ended: every attempt's units and their files are not needed again."""
        try:
            self.units.remove(self.plan.job_id)
            self.files.storage.objects.delete_prefix(units_prefix(self.plan.job_id))
        except Exception:  # left for the job's retention to remove
            log.warning("units of job %s not removed", self.plan.job_id, exc_info=True)


class UnitRunner:
    """A helping worker's side: runs units of other workers' audits. The attempt's model and the maps its
    tests compare with are loaded once and kept for its next unit (one attempt at a time)."""

    def __init__(self) -> None:
        self._plan: PlanId | None = None
        self._run: AuditRun | None = None
        self._states: dict[str, MethodState] = {}  # by published maps' name
        self._indexes: dict[RandomizationTest, dict[str, str]] = {}
        self._work: Path | None = None

    def run(
        self,
        plan: PlanId,
        unit: Unit,
        files: UnitFiles,
        inputs: Callable[[], dict[str, Path]],
        should_cancel: Callable[[], bool],
    ) -> UnitResult:
        run = self._prepared(plan, files, inputs, should_cancel)
        if unit.test not in self._indexes:  # which published maps the test compares with, by method
            self._indexes[unit.test] = json.loads(files.get(f"inputs/{unit.test.value}.json"))
        index = self._indexes[unit.test]
        self._states = {path: state for path, state in self._states.items() if path in index.values()}
        states = {name: self._state(files, run, name, index[name]) for name in unit.methods}
        part = files.work / f"{unit.key}.zip"
        with MapArchive(part) as archive:
            result = run_unit(run, unit, states, archive)
            archive.commit()
        files.store_result(result, part)
        part.unlink(missing_ok=True)
        return result

    def forget(self, plan: PlanId | None = None) -> None:
        """Drop the cached attempt (``plan``'s only, where given): its model, maps and inputs."""
        if plan is not None and plan != self._plan:
            return
        if self._work is not None:
            shutil.rmtree(self._work, ignore_errors=True)
        self._plan, self._run, self._states, self._indexes, self._work = None, None, {}, {}, None

    def _prepared(
        self,
        plan: PlanId,
        files: UnitFiles,
        inputs: Callable[[], dict[str, Path]],
        should_cancel: Callable[[], bool],
    ) -> AuditRun:
        if self._plan != plan or self._run is None:
            self.forget()
            self._work = files.work
            applied = AuditSettings.model_validate_json(files.get("inputs/settings.json"))
            paths = inputs()
            loaded = load(paths["model"], paths["probes"], applied)
            loaded = replace(loaded, settings=applied)  # the coordinator's batch sizes, for the same sums
            self._run = audit_run(loaded, prepare(loaded), should_cancel, _no_progress)
            self._plan = plan
        self._run.should_cancel = should_cancel
        return self._run

    def _state(self, files: UnitFiles, run: AuditRun, method: str, path: str) -> MethodState:
        if path not in self._states:
            raw = torch.from_numpy(np.load(io.BytesIO(files.get(path)))).to(run.x.device)
            self._states[path] = MethodState.of(run.methods[method], run.settings.seed, raw)
        return self._states[path]


def _no_progress(phase: str, advance: int) -> None:
    """A helper's progress shows through the coordinator, when it reads the unit's result."""


def listening_processes(app: Celery, queue: str, timeout_s: float = 1.0) -> int:
    """Worker processes consuming ``queue`` now (each node's pool size), the asking one included."""
    inspect = app.control.inspect(timeout=timeout_s)
    queues, stats = inspect.active_queues() or {}, inspect.stats() or {}
    return sum(
        int(stats.get(node, {}).get("pool", {}).get("max-concurrency", 1))
        for node, consumed in queues.items()
        if any(entry.get("name") == queue for entry in consumed)
    )


RUNNER = UnitRunner()  # one per worker process: keeps the last attempt's model and maps for its next unit


def execute_unit(
    plan: PlanId, key: str, store: JobStore, units: UnitStore, storage: Storage, settings: Settings
) -> None:
    """Run unit ``key`` of a running attempt if no one else holds it."""
    job = store.jobs.get_job(plan.job_id)
    if job is None or job.state is not JobState.running or job.attempts != plan.attempt:
        RUNNER.forget(plan)  # the attempt ended: nothing to help with
        return
    holder = holder_token("worker")
    if units.claim(plan, [key], holder, settings.lease_s) is None:
        return
    files = UnitFiles(storage, plan, storage.helper_dir(plan.job_id, plan.attempt))
    request = AuditRequest.model_validate(job.request)

    def inputs() -> dict[str, Path]:
        folder = files.work / "job"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        return fetch_inputs(request, job.tenant, store, storage, folder)

    renew = partial(units.heartbeat, plan, key, holder)
    try:
        with Lease(renew, settings.lease_s, f"unit {key}") as lease:
            throttle = Throttle(store.attempts, plan.job_id, plan.attempt, lease)
            RUNNER.run(plan, Unit.from_key(key), files, inputs, throttle.cancel_requested)
    except AuditCancelled:
        units.release(plan, key, holder)
        return
    except BaseException:
        units.release(plan, key, holder)
        raise
    finished = units.finish(plan, key, holder)
    log.info("unit done here: %s%s", key, "" if finished else " (another worker had taken it over)")
