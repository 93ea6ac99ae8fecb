"""One audit over two real Celery worker processes (docs/decisions/0026): the API, Redis, PostgreSQL and
two workers, each one process with one torch thread. The fanned-out report must equal the in-process
run's number for number, also when the worker running a unit is killed in the middle of it.

Leases are short (3 s) so a killed worker's unit is claimed again within the test."""

import json
import os
import signal
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from sqlalchemy import create_engine, text

from tests.conftest import TrainedDigits
from tests.e2e import check_results, poll, report_numbers, submit, upload
from tests.services import distributed_deployment, empty_tables, wait_until, worker_log
from workers.core.audit_settings import AuditSettings
from workers.core.report import AuditReport
from workers.core.storage import Storage
from workers.core.store.database import make_engine, migrate
from workers.core.store.units import PlanId, UnitStore, holder_token
from workers.engine.audit import run_audit
from workers.engine.plan import Unit
from workers.worker.fan_out import FanOut, UnitFiles, UnitRunner

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SETTINGS = {
    "methods": ["gradient", "gradient_x_input", "smoothgrad", "vargrad", "gradcam"],
    "tests": ["cascading", "independent"],
    "draws": 2,
    "max_draws": 2,
    "noise_samples": 16,
}


@dataclass(frozen=True)
class TwoWorkers:
    client: httpx.Client
    logs: list[Path]
    database_url: str
    model: str
    probes: str


@pytest.fixture(scope="module")
def two_workers(
    redis_url: str, postgres_url: str, trained_digits: TrainedDigits, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TwoWorkers]:
    empty_tables(postgres_url)
    folder = tmp_path_factory.mktemp("fan-out")
    short_leases = {"SALIENCY_LEASE_S": "3", "SALIENCY_SWEEP_INTERVAL_S": "0.5"}
    with (
        distributed_deployment(
            folder, redis_url, postgres_url, short_leases, workers=2, worker_env=ONE_THREAD
        ) as (url, _),
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        yield TwoWorkers(
            client,
            [folder / worker_log(index) for index in range(2)],
            postgres_url,
            upload(client, "/v1/models", trained_digits.onnx_dynamo.read_bytes()),
            upload(client, "/v1/probe-sets", trained_digits.probes.read_bytes()),
        )


@pytest.fixture(scope="module")
def in_process(trained_digits: TrainedDigits, tmp_path_factory: pytest.TempPathFactory) -> AuditReport:
    """The same audit run here, as the CLI runs it, on one torch thread as the workers do."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_audit(
            trained_digits.onnx_dynamo,
            trained_digits.probes,
            AuditSettings.model_validate(SETTINGS),
            tmp_path_factory.mktemp("in-process"),
        )
    finally:
        torch.set_num_threads(threads)


def _units_done_by_helpers(logs: list[Path]) -> int:
    return sum(log.read_text(errors="replace").count("unit done here") for log in logs)


def _tracebacks(logs: list[Path]) -> int:
    return sum(log.read_text(errors="replace").count("Traceback") for log in logs)


def _helper_units(database_url: str) -> dict[str, tuple[str, str]]:
    """Each unit's state and holder, of the units a helping worker (not the coordinator) holds or held."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT key, state, holder FROM audit_units WHERE holder LIKE 'worker:%'")
            ).all()
    finally:
        engine.dispose()
    return {key: (state, holder) for key, state, holder in rows}


def test_an_audit_fanned_out_over_two_workers_reports_the_same_numbers_as_in_process(
    two_workers: TwoWorkers, in_process: AuditReport, tmp_path: Path
) -> None:
    before = _units_done_by_helpers(two_workers.logs)
    body = {"model": two_workers.model, "probes": two_workers.probes, "settings": SETTINGS}
    location = submit(two_workers.client, body)
    job = poll(two_workers.client, location, {"succeeded", "failed", "cancelled"}, timeout=600)
    assert job["state"] == "succeeded", job["error"]
    assert job["progress"]["done"] == job["progress"]["total"]
    report = check_results(two_workers.client, location, job, tmp_path)
    assert _units_done_by_helpers(two_workers.logs) > before  # the other worker ran some of the units
    assert report_numbers(report) == report_numbers(in_process)


def test_a_fanned_out_audit_survives_the_worker_of_a_unit_killed_in_the_middle_of_it(
    two_workers: TwoWorkers, in_process: AuditReport, tmp_path: Path
) -> None:
    body = {"model": two_workers.model, "probes": two_workers.probes, "settings": SETTINGS}
    location = submit(two_workers.client, body)
    held: list[tuple[str, str]] = []

    def helper_runs_a_noisy_unit() -> bool:
        running = [
            (key, holder)
            for key, (state, holder) in _helper_units(two_workers.database_url).items()
            if state == "running" and "smoothgrad" in key  # the longest units: noisy copies
        ]
        held.extend(running)
        return bool(running)

    wait_until(helper_runs_a_noisy_unit, 300, "a unit run by the helping worker")
    key, holder = held[0]
    os.kill(int(holder.split(":")[1]), signal.SIGKILL)
    assert _helper_units(two_workers.database_url)[key] == ("running", holder)  # killed in the middle
    job = poll(two_workers.client, location, {"succeeded", "failed", "cancelled"}, timeout=600)
    assert job["state"] == "succeeded", job["error"]
    assert job["attempts"] == 1  # the job itself was never lost: only the unit ran again
    report = check_results(two_workers.client, location, job, tmp_path)
    assert report_numbers(report) == report_numbers(in_process)


def test_a_cancel_stops_the_units_on_every_worker_and_forgets_them(two_workers: TwoWorkers) -> None:
    tracebacks = _tracebacks(two_workers.logs)
    body = {"model": two_workers.model, "probes": two_workers.probes, "settings": SETTINGS | {"seed": 3}}
    location = submit(two_workers.client, body)
    wait_until(
        lambda: any(state == "running" for state, _ in _helper_units(two_workers.database_url).values()),
        300,
        "a unit run by the helping worker",
    )
    assert two_workers.client.post(f"{location}/cancel").json()["state"] == "cancelling"
    job = poll(two_workers.client, location, {"succeeded", "failed", "cancelled"}, timeout=120)
    assert job["state"] == "cancelled"
    wait_until(lambda: not _helper_units(two_workers.database_url), 30, "the job's units forgotten")
    assert _tracebacks(two_workers.logs) == tracebacks  # the helper stopped its unit cleanly


@pytest.mark.parametrize("target", ["predicted", "randomized_argmax"])
def test_units_run_by_a_helper_give_the_in_process_report_for_every_test_and_baseline(
    trained_digits: TrainedDigits, tmp_path: Path, target: str
) -> None:
    """The coordinator and a helper in this process, sharing a SQLite job store and a folder object
    store: the helper takes two units of three as their messages are sent, the coordinator the rest."""
    settings = AuditSettings(
        methods=["gradient", "gradient_x_input", "vargrad", "gradcam", "edge_detector"],
        tests=["cascading", "independent", "random_logit", "smooth_mprt", "efficient_mprt"],
        target=target,
        smooth_mprt_samples=2,
        noise_samples=4,
        draws=1,
        max_draws=2,
    )
    engine = make_engine(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    migrate(engine)
    units, storage, plan = UnitStore(engine), Storage(tmp_path / "data"), PlanId("job", 1)
    helper, sent, helped = UnitRunner(), [], []
    model, probes = trained_digits.onnx_legacy, trained_digits.probes

    def send(key: str) -> None:
        sent.append(key)
        if len(sent) % 3 == 0:
            return  # left to the coordinator
        holder = holder_token("worker")
        assert units.claim(plan, [key], holder, lease_s=60) == key
        files = UnitFiles(storage, plan, tmp_path / "helper")
        helper.run(plan, Unit.from_key(key), files, lambda: {"model": model, "probes": probes}, lambda: False)
        assert units.finish(plan, key, holder)
        helped.append(key)

    fan_out = FanOut(plan, units, UnitFiles(storage, plan, tmp_path / "coordinator"), send, lease_s=60)
    shared = run_audit(model, probes, settings, tmp_path / "shared", executor=fan_out)
    alone = run_audit(model, probes, settings, tmp_path / "alone")
    assert 0 < len(helped) < len(sent)
    assert report_numbers(shared) == report_numbers(alone)
    with (
        zipfile.ZipFile(tmp_path / "shared" / "maps.zip") as a,
        zipfile.ZipFile(tmp_path / "alone" / "maps.zip") as b,
    ):
        assert json.loads(a.read("manifest.json")) == json.loads(b.read("manifest.json"))
    fan_out.close()
    assert units.holders(plan) == {}
    assert not [path for path in (tmp_path / "data").rglob("*") if path.is_file() and "units" in path.parts]
