"""One audit over many Celery workers (docs/decisions/0026).

The worker that runs a job (the coordinator) computes the trained maps, publishes what units need to the
object store, plans each round of units in the job store and sends one Celery message per unit. Any
worker that gets a message claims its unit, runs it (``workers.engine.units.run_unit``) and stores its
result; the coordinator claims units too, so no unit waits for a free worker, and one worker alone runs
the whole plan. A unit whose holder stops renewing its lease is claimed again; results are read once, in
plan order, so the report is the same number for number however many workers ran it.
"""

import io
import logging
import os
import pickle
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from celery import Celery

from workers.config import Settings
from workers.engine.archive import MapArchive
from workers.engine.audit import audit_run
from workers.engine.check_run import InProcess
from workers.engine.errors import AuditCancelled
from workers.engine.plan import Unit
from workers.engine.preparation import load, prepare
from workers.engine.settings import AuditSettings, RandomizationTest
from workers.engine.units import ArraySink, AuditRun, MethodState, UnitResult, run_unit
from workers.job_runner import Throttle, fetch_inputs
from workers.lease import Lease
from workers.requests import AuditRequest
from workers.storage import Storage
from workers.store.jobs import JobState, JobStore
from workers.store.units import UnitStore, holder_token

log = logging.getLogger(__name__)

POLL_S = 0.2  # how often the coordinator looks for finished or lapsed units when it has none to run
LOCAL_ONLY = frozenset(
    {RandomizationTest.data}
)  # their models (trained twins) exist only in the job's process


class UnitFiles:
    """Where a job's units find their inputs and leave their results in the object store."""

    def __init__(self, storage: Storage, job_id: str, work: Path) -> None:
        self.storage, self.prefix, self.work = storage, f"units/{job_id}", work
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

    def fetch(self, name: str, target: Path) -> Path:
        self.storage.objects.fetch(f"{self.prefix}/{name}", target)
        return target

    def store_result(self, result: UnitResult, part: Path) -> None:
        """The unit's numbers (pickled: written and read only by this service's workers) and its maps."""
        self.put(f"results/{result.unit.key}.pickle", pickle.dumps(result))
        self.storage.objects.put(f"{self.prefix}/results/{result.unit.key}.zip", part)

    def load_result(self, key: str) -> UnitResult:
        return pickle.loads(self.get(f"results/{key}.pickle"))

    def load_maps(self, key: str) -> Path:
        return self.fetch(f"results/{key}.zip", self.work / f"{key}.zip")

    def remove(self) -> None:
        self.storage.objects.delete_prefix(self.prefix)
        shutil.rmtree(self.work, ignore_errors=True)


def _maps_name(test: RandomizationTest, method: str) -> str:
    return f"inputs/{test.value}/{method}.npy"


def _array_bytes(tensor: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, tensor.cpu().numpy(), allow_pickle=False)
    return buffer.getvalue()


class FanOut:
    """The coordinator's side: a ``UnitExecutor`` that shares each round of units with other workers."""

    def __init__(
        self, job_id: str, units: UnitStore, files: UnitFiles, send: Callable[[str], None], lease_s: float
    ) -> None:
        self.job_id, self.units, self.files, self.send, self.lease_s = job_id, units, files, send, lease_s
        self.holder = holder_token("coordinator")
        self._published: set[str] = set()

    def run(
        self, run: AuditRun, units: list[Unit], states: dict[str, MethodState], archive: ArraySink
    ) -> Iterator[UnitResult]:
        if not units or units[0].test in LOCAL_ONLY:
            yield from InProcess().run(run, units, states, archive)
            return
        assert isinstance(archive, MapArchive)
        self._publish(run, units[0].test, states)
        keys = [unit.key for unit in units]
        self.units.add(self.job_id, keys)
        for key in keys:
            self.send(key)
        here = self._run_all(run, {unit.key: unit for unit in units}, states)
        for unit in units:
            result = here[unit.key] if unit.key in here else self.files.load_result(unit.key)
            part = self.files.load_maps(unit.key)
            archive.add_archive(part)
            part.unlink()
            if unit.key not in here:  # a unit another worker ran: its progress shows now
                done = sum(len(stages) for stages in result.stages.values())
                run.report_progress(f"{unit.test.value}: draw {unit.draw + 1} by another worker", done)
            yield result

    def _run_all(
        self, run: AuditRun, units: dict[str, Unit], states: dict[str, MethodState]
    ) -> dict[str, UnitResult]:
        """Claim and run units here until every one is done, here or elsewhere."""
        here: dict[str, UnitResult] = {}
        while True:
            done = self.units.done(self.job_id, list(units))
            left = [key for key in units if key not in done]
            if not left:
                return here
            key = self.units.claim(self.job_id, left, self.holder, self.lease_s)
            if key is not None:
                here[key] = self._run_here(run, units[key], states)
            elif run.should_cancel():
                raise AuditCancelled
            else:
                time.sleep(POLL_S)

    def _run_here(self, run: AuditRun, unit: Unit, states: dict[str, MethodState]) -> UnitResult:
        part = self.files.work / f"{unit.key}.zip"
        try:
            renew = lambda: self.units.heartbeat(self.job_id, unit.key, self.holder)  # noqa: E731
            with Lease(renew, self.lease_s, f"unit {unit.key}"), MapArchive(part) as archive:
                result = run_unit(run, unit, states, archive)
                archive.commit()
            self.files.store_result(result, part)
        except BaseException:
            self.units.release(self.job_id, unit.key, self.holder)
            raise
        self.units.finish(self.job_id, unit.key, self.holder)
        return result

    def _publish(self, run: AuditRun, test: RandomizationTest, states: dict[str, MethodState]) -> None:
        """The applied settings and, per test, each method's maps its stages are compared with."""
        if "settings" not in self._published:
            self.files.put("inputs/settings.json", run.settings.model_dump_json().encode())
            self._published.add("settings")
        for name, state in states.items():
            if _maps_name(test, name) not in self._published:
                self.files.put(_maps_name(test, name), _array_bytes(state.raw))
                self._published.add(_maps_name(test, name))

    def close(self) -> None:
        """The job ended: its units and their files are not needed again."""
        self.units.remove(self.job_id)
        self.files.remove()


class UnitRunner:
    """A helping worker's side: runs units of other workers' audits. The audit's inputs and trained maps
    are loaded once per job and kept for its next unit (one job at a time)."""

    def __init__(self) -> None:
        self._job: str | None = None
        self._run: AuditRun | None = None
        self._states: dict[tuple[RandomizationTest, str], MethodState] = {}
        self._files: UnitFiles | None = None

    def run(
        self,
        job_id: str,
        unit: Unit,
        files: UnitFiles,
        inputs: Callable[[], dict[str, Path]],
        should_cancel: Callable[[], bool],
    ) -> UnitResult:
        run = self._prepared(job_id, files, inputs, should_cancel)
        states = {name: self._state(files, run, unit.test, name) for name in unit.methods}
        part = files.work / f"{unit.key}.zip"
        with MapArchive(part) as archive:
            result = run_unit(run, unit, states, archive)
            archive.commit()
        files.store_result(result, part)
        return result

    def _prepared(
        self,
        job_id: str,
        files: UnitFiles,
        inputs: Callable[[], dict[str, Path]],
        should_cancel: Callable[[], bool],
    ) -> AuditRun:
        if self._job != job_id or self._run is None:
            if self._files is not None:
                shutil.rmtree(self._files.work, ignore_errors=True)  # the previous job's inputs
            self._job, self._run, self._states, self._files = None, None, {}, files
            applied = AuditSettings.model_validate_json(files.get("inputs/settings.json"))
            paths = inputs()
            loaded = load(paths["model"], paths["probes"], applied)
            loaded = replace(loaded, settings=applied)  # the coordinator's batch sizes, for the same sums
            self._run = audit_run(loaded, prepare(loaded), should_cancel, _no_progress)
            self._job = job_id
        self._run.should_cancel = should_cancel
        return self._run

    def _state(self, files: UnitFiles, run: AuditRun, test: RandomizationTest, name: str) -> MethodState:
        if (test, name) not in self._states:
            raw = torch.from_numpy(np.load(io.BytesIO(files.get(_maps_name(test, name))))).to(run.x.device)
            self._states[test, name] = MethodState.of(run.methods[name], run.settings.seed, raw)
        return self._states[test, name]


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


_RUNNER = UnitRunner()  # one per worker process: keeps the last job's model and maps for its next unit


def execute_unit(
    job_id: str, key: str, store: JobStore, units: UnitStore, storage: Storage, settings: Settings
) -> bool:
    """Run unit ``key`` of a running job if no one else holds it; whether this worker finished it."""
    job = store.get_job(job_id)
    if job is None or job.state is not JobState.running:
        return False  # the audit ended (or waits for its next attempt): nothing to help with
    holder = holder_token("worker")
    if units.claim(job_id, [key], holder, settings.lease_s) is None:
        return False
    files = UnitFiles(storage, job_id, storage.root / "work" / f"{job_id}-units-{os.getpid()}")
    request = AuditRequest.model_validate(job.request)

    def inputs() -> dict[str, Path]:
        folder = files.work / "job"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        return fetch_inputs(request, job.tenant, store, storage, folder)

    try:
        with Lease(lambda: units.heartbeat(job_id, key, holder), settings.lease_s, f"unit {key}") as lease:
            throttle = Throttle(store, job_id, job.attempts, lease)
            _RUNNER.run(job_id, Unit.from_key(key), files, inputs, throttle.cancel_requested)
    except AuditCancelled:
        units.release(job_id, key, holder)
        return False
    except BaseException:
        units.release(job_id, key, holder)
        raise
    finished = units.finish(job_id, key, holder)
    log.info("unit done here: %s%s", key, "" if finished else " (another worker had taken it over)")
    return finished
