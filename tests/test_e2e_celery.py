"""End to end through the distributed deployment: the API process, a real Redis, a real Celery worker
process running the real engine, and the PostgreSQL job store. A client talks HTTP to it with httpx.

Leases are short here (5 s, swept every half second) so that a lost job is recovered within the test."""

import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.api.audits import request_hash
from tests.conftest import TrainedDigits
from tests.e2e import FAST_SETTINGS, check_results, poll, submit, training_npz, upload
from tests.services import distributed_deployment, empty_tables
from workers.core.requests import AuditRequest
from workers.core.store.database import make_engine
from workers.core.store.jobs import JobStore

SHORT_LEASES = {"SALIENCY_LEASE_S": "5", "SALIENCY_SWEEP_INTERVAL_S": "0.5"}


@dataclass(frozen=True)
class Deployment:
    client: httpx.Client
    worker: subprocess.Popen
    folder: Path
    model: str
    probes: str
    training_data: str


@pytest.fixture(scope="module")
def deployment(
    redis_url: str, postgres_url: str, trained_digits: TrainedDigits, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    empty_tables(postgres_url)
    folder = tmp_path_factory.mktemp("celery-deployment")
    with (
        distributed_deployment(folder, redis_url, postgres_url, SHORT_LEASES) as (url, (worker,)),
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        training = training_npz(*trained_digits.data.twin_training_set())
        yield Deployment(
            client,
            worker,
            folder,
            upload(client, "/v1/models", trained_digits.onnx_dynamo.read_bytes()),
            upload(client, "/v1/probe-sets", trained_digits.probes.read_bytes()),
            upload(client, "/v1/training-sets", training),
        )


def _slow_body(d: Deployment, **more_settings: object) -> dict:
    """An audit that trains one random-label twin first: seconds, cancellable every epoch."""
    settings = {"methods": ["gradient"], "tests": ["data"], "training": {"models": 1, "max_models": 1}}
    settings |= more_settings
    return {"model": d.model, "probes": d.probes, "training_data": d.training_data, "settings": settings}


def test_an_audit_runs_on_a_celery_worker_to_a_complete_report(
    deployment: Deployment, tmp_path: Path
) -> None:
    body = {"model": deployment.model, "probes": deployment.probes, "settings": FAST_SETTINGS}
    location = submit(deployment.client, body)
    job = poll(deployment.client, location, {"succeeded", "failed", "cancelled"})
    assert job["state"] == "succeeded", job["error"]
    assert {"queued", "running", "succeeded"} <= set(job["timestamps"]) and job["attempts"] == 1
    assert job["progress"]["done"] == job["progress"]["total"] > 0
    report = check_results(deployment.client, location, job, tmp_path)
    assert report.methods[0].tests[0].test == "cascading" and report.probes.count == 48


def test_a_resubmission_with_the_same_key_does_not_run_twice(deployment: Deployment) -> None:
    body = {"model": deployment.model, "probes": deployment.probes, "settings": FAST_SETTINGS | {"seed": 7}}
    first = submit(deployment.client, body, key="e2e-once")
    assert submit(deployment.client, body, key="e2e-once") == first
    job = poll(deployment.client, first, {"succeeded", "failed"})
    assert job["state"] == "succeeded" and job["attempts"] == 1
    worker_log = (deployment.folder / "worker.log").read_text()
    assert worker_log.count(f"run_job[{job['id']}] received") == 1  # the replay sent no second message


def test_a_running_audit_and_a_queued_one_are_cancelled(deployment: Deployment) -> None:
    client = deployment.client
    running = submit(client, _slow_body(deployment))
    poll(client, running, {"running"})
    queued = submit(client, _slow_body(deployment, seed=3))
    assert client.get(queued).json()["state"] == "queued"  # the only worker is busy and prefetches nothing
    assert client.post(f"{queued}/cancel").json()["state"] == "cancelled"
    assert client.post(f"{running}/cancel").json()["state"] == "cancelling"
    stopped = poll(client, running, {"cancelled", "succeeded", "failed"}, timeout=60)
    assert stopped["state"] == "cancelled" and "cancelling" in stopped["timestamps"]
    assert client.get(f"{running}/report").status_code == 409
    never_ran = client.get(queued).json()
    assert never_ran["state"] == "cancelled" and "running" not in never_ran["timestamps"]


def test_the_job_of_a_killed_worker_is_requeued_when_its_lease_lapses_and_completes(
    deployment: Deployment, tmp_path: Path
) -> None:
    client = deployment.client
    location = submit(client, _slow_body(deployment, seed=11))
    poll(client, location, {"running"})
    children = subprocess.run(
        ["pgrep", "-P", str(deployment.worker.pid)], capture_output=True, text=True, check=True
    ).stdout.split()
    for child in children:
        os.kill(int(child), signal.SIGKILL)  # the pool process running the job dies mid-audit
    job = poll(client, location, {"succeeded", "failed", "cancelled"})
    assert job["state"] == "succeeded", job["error"]
    assert job["attempts"] == 2
    check_results(client, location, job, tmp_path)
    assert "stopped renewing the lease; requeued" in (deployment.folder / "api.log").read_text()


def test_a_job_recorded_but_never_dispatched_is_dispatched_by_the_sweeper(
    deployment: Deployment, postgres_url: str, tmp_path: Path
) -> None:
    """As if the API process stopped between recording the job and handing it to the broker."""
    body = {"model": deployment.model, "probes": deployment.probes, "settings": FAST_SETTINGS | {"seed": 5}}
    request = AuditRequest.model_validate(body)
    engine = make_engine(postgres_url)
    job, _ = JobStore(engine).jobs.create_job(
        "local", request.model_dump(mode="json"), request_hash(request), None, "cpu"
    )
    engine.dispose()
    location = f"/v1/audits/{job.id}"
    finished = poll(deployment.client, location, {"succeeded", "failed", "cancelled"})
    assert finished["state"] == "succeeded", finished["error"]
    assert finished["attempts"] == 1
    check_results(deployment.client, location, finished, tmp_path)
