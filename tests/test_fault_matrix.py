"""The fault matrix: the distributed service (its own PostgreSQL instance, its own Redis with an append-only
file, the API and a Celery worker as processes, the data directory on a small tmpfs) takes one fault at a
time, and every accepted job still reaches a terminal state within a bound, none runs to success twice,
every report verifies against its checksum, and the answers during the fault are 503/507 problem+json.

Settings are shortened (lease 3 s, sweep 0.5 s, re-dispatch 3 s, worker retries of about 4 s in all) so
that the bounds are seconds. With SALIENCY_FAULT_MATRIX=<file> the measured table is written there.
"""

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from service.api.audits import request_hash
from tests.conftest import TrainedDigits
from tests.e2e import check_results, poll, submit, training_npz, upload
from tests.services import CELERY_CPU_WORKER, VENV_BIN, PostgresServer, RedisServer, free_port, wait_until
from workers.core.requests import AuditRequest
from workers.core.store.database import make_engine
from workers.core.store.jobs import JobStore

SETTINGS = {
    "SALIENCY_LEASE_S": "3",
    "SALIENCY_SWEEP_INTERVAL_S": "0.5",
    "SALIENCY_REDISPATCH_AFTER_S": "3",
    "SALIENCY_STORE_RETRY_S": "0.5",
    "SALIENCY_STORE_RETRIES": "3",
    "SALIENCY_MIN_FREE_DISK_MIB": "8",
}
FAST = {"methods": ["gradient"], "tests": ["cascading"], "draws": 1, "max_draws": 1}
BOUND_S = 150  # every accepted job is terminal this long after the fault ends
TERMINAL = {"succeeded", "failed", "cancelled"}
PROBLEM = "application/problem+json"
MATRIX: list[dict[str, object]] = []


@dataclass
class Stack:
    folder: Path
    data: Path
    postgres: PostgresServer
    redis: RedisServer
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    api: subprocess.Popen | None = None
    worker: subprocess.Popen | None = None
    artifacts: dict[str, str] = field(default_factory=dict)
    tmpfs: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_api(self) -> None:
        args = [str(VENV_BIN / "saliency-audit"), "serve", "--port", str(self.port)]
        self.api = _spawn(args, self.env, self.folder / "api.log")
        wait_until(lambda: self.api.poll() is None and httpx.get(f"{self.url}/healthz").is_success, 60, "API")

    def start_worker(self) -> None:
        log = self.folder / "worker.log"
        before = log.read_bytes().count(b"ready.") if log.exists() else 0
        self.worker = _spawn([*CELERY_CPU_WORKER, "--loglevel", "INFO", "-n", "fault@%h"], self.env, log)
        wait_until(lambda: log.read_bytes().count(b"ready.") > before, 90, "celery worker")

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def body(self, seed: int, slow: bool = False) -> dict:
        """An audit: seconds of work, or (``slow``) one that trains a random-label twin first."""
        settings: dict = FAST | {"seed": seed}
        body = {"model": self.artifacts["model"], "probes": self.artifacts["probes"]}
        if slow:
            settings |= {"tests": ["data"], "training": {"models": 1, "max_models": 1}}
            body["training_data"] = self.artifacts["training"]
        return body | {"settings": settings}

    def stop(self) -> None:
        for process in (self.api, self.worker):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("ab") as output:
        return subprocess.Popen(args, env=os.environ | env, stdout=output, stderr=subprocess.STDOUT)


def _mount_tmpfs(folder: Path, size_mib: int) -> bool:
    folder.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(folder)], capture_output=True
    )
    return mounted.returncode == 0


@pytest.fixture(scope="module")
def stack(trained_digits: TrainedDigits, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("fault-matrix")
    postgres, redis = PostgresServer(), RedisServer(folder, append_only=True)
    data = folder / "data"
    tmpfs = _mount_tmpfs(data, 96)
    env = SETTINGS | {
        "SALIENCY_DATA_DIR": str(data),
        "SALIENCY_DATABASE_URL": postgres.url,
        "SALIENCY_BROKER_URL": redis.url,
    }
    deployment = Stack(folder, data, postgres, redis, env, tmpfs=tmpfs)
    try:
        postgres.start()
        redis.start()
        deployment.start_api()
        deployment.start_worker()
        with deployment.client() as client:
            deployment.artifacts = {
                "model": upload(client, "/v1/models", trained_digits.onnx_dynamo.read_bytes()),
                "probes": upload(client, "/v1/probe-sets", trained_digits.probes.read_bytes()),
                "training": upload(
                    client, "/v1/training-sets", training_npz(*trained_digits.data.twin_training_set())
                ),
            }
        yield deployment
    finally:
        deployment.stop()
        redis.stop()
        postgres.remove()
        if tmpfs:
            subprocess.run(["umount", "-l", str(data)], check=False)
        target = os.environ.get("SALIENCY_FAULT_MATRIX")
        if target:
            Path(target).write_text(_table())


def _table() -> str:
    header = "| fault | accepted | succeeded | failed | lost | duplicated | seconds to recover |"
    rows = [
        f"| {r['fault']} | {r['accepted']} | {r['succeeded']} | {r['failed']} | {r['lost']} | "
        f"{r['duplicated']} | {r['recover_s']:.1f} |"
        for r in MATRIX
    ]
    return "\n".join([header, "|---|---|---|---|---|---|---|", *rows]) + "\n"


def _settle(stack: Stack, fault: str, locations: list[str], fault_ended: float, out: Path) -> dict:
    """Wait for every accepted job to end; check results and duplicates; record the matrix row."""
    jobs = {}
    with stack.client() as client:
        for location in locations:
            jobs[location] = poll(client, location, TERMINAL, timeout=BOUND_S)
        recovered = time.monotonic() - fault_ended
        for location, job in jobs.items():
            if job["state"] == "succeeded":
                check_results(client, location, job, out)
    worker_log = (stack.folder / "worker.log").read_text(errors="replace")
    successes = {
        job["id"]: len(re.findall(rf"job {job['id']}\]: audit succeeded", worker_log))
        for job in jobs.values()
    }
    row = {
        "fault": fault,
        "accepted": len(jobs),
        "succeeded": sum(job["state"] == "succeeded" for job in jobs.values()),
        "failed": sum(job["state"] == "failed" for job in jobs.values()),
        "lost": sum(job["state"] not in TERMINAL for job in jobs.values()),
        "duplicated": sum(count > 1 for count in successes.values()),
        "recover_s": recovered,
    }
    MATRIX.append(row)
    assert row["succeeded"] == row["accepted"], jobs
    assert row["duplicated"] == 0, successes
    return row


def _is_problem(response: httpx.Response, status: int, kind: str) -> bool:
    return (
        response.status_code == status
        and response.headers["content-type"].startswith(PROBLEM)
        and response.json()["type"] == f"/problems/{kind}"
        and "retry-after" in response.headers
    )


def test_a_worker_killed_mid_audit_loses_nothing(stack: Stack, tmp_path: Path) -> None:
    with stack.client() as client:
        running = submit(client, stack.body(1, slow=True))
        queued = submit(client, stack.body(2))
        poll(client, running, {"running"})
    children = subprocess.run(["pgrep", "-P", str(stack.worker.pid)], capture_output=True, text=True)
    for child in children.stdout.split():
        os.kill(int(child), signal.SIGKILL)  # the pool process dies mid-audit
    _settle(stack, "worker SIGKILL mid-audit", [running, queued], time.monotonic(), tmp_path)


def test_an_api_killed_mid_upload_leaves_no_partial_file_and_the_upload_succeeds_again(
    stack: Stack, trained_digits: TrainedDigits, tmp_path: Path
) -> None:
    data = trained_digits.probes.read_bytes()

    def slowly() -> Iterator[bytes]:
        for start in range(0, len(data), 4096):
            yield data[start : start + 4096]
            time.sleep(0.05)

    def send() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the server dies under it
            httpx.post(f"{stack.url}/v1/probe-sets", content=slowly(), timeout=30)

    sender = threading.Thread(target=send)
    sender.start()
    uploads = stack.data / "uploads"
    wait_until(lambda: any(uploads.glob("upload-*/*")), 20, "a partial upload")
    stack.api.send_signal(signal.SIGKILL)
    stack.api.wait()
    killed = time.monotonic()
    sender.join()
    partial = next(uploads.glob("upload-*"))
    quiet = time.time() - 60  # as if the partial file had not been written to for a minute
    for path in (partial, *partial.iterdir()):
        os.utime(path, (quiet, quiet))
    stack.start_api()
    wait_until(lambda: not partial.exists(), 20, "the partial upload's removal")
    with stack.client() as client:
        probes = upload(client, "/v1/probe-sets", data + b"")
        body = stack.body(3) | {"probes": probes}
        location = submit(client, body)
    _settle(stack, "API SIGKILL mid-upload", [location], killed, tmp_path)


def test_a_job_stored_but_never_queued_by_a_killed_api_runs_once(stack: Stack, tmp_path: Path) -> None:
    """The API process died between storing the job and handing it to the broker."""
    request = AuditRequest.model_validate(stack.body(4))
    engine = make_engine(stack.postgres.url)
    job, _ = JobStore(engine).jobs.create_job(
        "local", request.model_dump(mode="json"), request_hash(request), None, "cpu"
    )
    engine.dispose()
    stack.api.send_signal(signal.SIGKILL)
    stack.api.wait()
    killed = time.monotonic()
    stack.start_api()
    _settle(stack, "API SIGKILL between storing and queueing", [f"/v1/audits/{job.id}"], killed, tmp_path)


def test_a_redis_restart_with_queued_jobs_loses_none(stack: Stack, tmp_path: Path) -> None:
    with stack.client() as client:
        running = submit(client, stack.body(5, slow=True))
        queued = [submit(client, stack.body(seed)) for seed in (6, 7)]
        poll(client, running, {"running"})
        stack.redis.stop()
        time.sleep(2)
        stack.redis.start()
    _settle(stack, "Redis restart with queued jobs", [running, *queued], time.monotonic(), tmp_path)


def _database_outage(stack: Stack, seconds: float, tmp_path: Path, fault: str) -> None:
    with stack.client() as client:
        locations = [submit(client, stack.body(seed)) for seed in (8, 9, 10)]
        stack.postgres.stop()
        try:
            deadline = time.monotonic() + seconds
            polled = client.get(locations[0])
            submitted = client.post("/v1/audits", json=stack.body(11))
            assert _is_problem(polled, 503, "database-unavailable"), polled.text
            assert _is_problem(submitted, 503, "database-unavailable"), submitted.text
            time.sleep(max(0.0, deadline - time.monotonic()))
        finally:
            stack.postgres.start()
    _settle(stack, fault, locations, time.monotonic(), tmp_path)
    assert "database unavailable" in (stack.folder / "api.log").read_text()


def test_a_short_database_outage_answers_503_and_loses_nothing(stack: Stack, tmp_path: Path) -> None:
    _database_outage(stack, 3, tmp_path, "PostgreSQL down 3 s")


def test_a_database_outage_longer_than_every_retry_strands_no_job(stack: Stack, tmp_path: Path) -> None:
    _database_outage(stack, 25, tmp_path, "PostgreSQL down 25 s (past every worker retry)")
    unhandled = (stack.folder / "api.log").read_text().count("unhandled error")
    assert unhandled == 0


def test_a_full_data_disk_answers_507_and_its_audit_waits_for_space(stack: Stack, tmp_path: Path) -> None:
    if not stack.tmpfs:
        pytest.skip("no tmpfs could be mounted for the data directory (needs root)")
    filler = stack.data / "filler"
    free = os.statvfs(stack.data)
    spare = 4 * 1024**2  # below the 8 MiB floor
    with filler.open("wb") as file:
        file.truncate(0)
        for _ in range(max(0, (free.f_bavail * free.f_frsize - spare) // 1024**2)):
            file.write(b"\0" * 1024**2)
    try:
        with stack.client() as client:
            refused = client.post(
                "/v1/models", content=b"x" * 1024, headers={"Content-Type": "application/octet-stream"}
            )
            assert _is_problem(refused, 507, "insufficient-storage"), refused.text
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["storage"] == "degraded"
            location = submit(client, stack.body(12))
            time.sleep(3)
            assert client.get(location).json()["state"] == "queued"  # the worker takes no new audit
    finally:
        filler.unlink()
    _settle(stack, "data disk full", [location], time.monotonic(), tmp_path)
    assert not list((stack.data / "uploads").glob("upload-*"))  # the refused upload kept nothing
