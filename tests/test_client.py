"""The Python client and the remote gate (`saliency-audit submit`) against live services: the distributed
deployment (uvicorn API, Celery worker, Redis, PostgreSQL) for the client, the embedded service for the
gate's exit codes."""

import json
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.client.http import AuditClient, ServiceError
from tests.conftest import TrainedDigits
from tests.services import (
    VENV_BIN,
    api_server,
    create_api_key,
    distributed_deployment,
    free_port,
    new_bucket,
)
from workers.core.audit_settings import AuditSettings
from workers.core.report import AuditReport
from workers.core.requests import ArtifactKind, AuditRequest
from workers.core.store.states import JobState

FAST = AuditSettings(methods=["gradient", "gradcam"], tests=["cascading"])
SLOW = AuditSettings(methods=["smoothgrad"], tests=["cascading"], draws=100, max_draws=100)


class RecordingTransport(httpx.HTTPTransport):
    """The real transport, noting each answer's status: what the client met before it returned."""

    def __init__(self) -> None:
        super().__init__()
        self.statuses: list[tuple[str, int]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.statuses.append((f"{request.method} {request.url.path}", response.status_code))
        return response


def _sample(metrics: str, name: str) -> float:
    return float(next(line for line in metrics.splitlines() if line.startswith(name)).rsplit(" ", 1)[1])


def test_the_client_audits_on_the_distributed_service_and_skips_bytes_the_server_has(
    trained_digits: TrainedDigits, tmp_path: Path, redis_url: str, postgres_url: str, s3_endpoint: str
) -> None:
    """API and worker as on two machines: each its own disk, sharing Redis, PostgreSQL and an S3 bucket."""
    bucket = new_bucket(s3_endpoint)
    settings = {
        "SALIENCY_AUTH": "keys",
        "SALIENCY_STORAGE_URL": f"s3://{bucket}/audits",
        "SALIENCY_S3_ENDPOINT": s3_endpoint,
        "SALIENCY_S3_REGION": "us-east-1",
        "SALIENCY_LOG_FORMAT": "json",
    }
    deployment = distributed_deployment(tmp_path, redis_url, postgres_url, settings, shared_data_dir=False)
    with deployment as (url, _):
        key = create_api_key(
            {"SALIENCY_DATABASE_URL": postgres_url, "SALIENCY_DATA_DIR": str(tmp_path / "data")}, "pipeline"
        )
        transport = RecordingTransport()
        seen: list[JobState] = []
        with AuditClient(url, key, transport=transport) as client:
            job = client.audit(
                trained_digits.onnx_dynamo,
                trained_digits.probes,
                FAST,
                timeout_s=300,
                on_progress=lambda current: seen.append(current.state),
            )
            assert job.state is JobState.succeeded, job.error
            assert seen[0] in (JobState.queued, JobState.running) and seen[-1] is JobState.succeeded
            report = client.report(job.id)
            assert isinstance(report, AuditReport) and [m.name for m in report.methods] == FAST.methods
            html = client.download(job.id, "report.html", tmp_path / "out")
            archive = client.download(job.id, "archive", tmp_path / "out")
            assert html.read_bytes().lower().startswith(b"<!doctype html") and archive.stat().st_size > 0
            again, sent = client.upload(ArtifactKind.model, trained_digits.onnx_dynamo)
            assert not sent and again.sha256 == job.request.model
        uploads = [status for call, status in transport.statuses if call.startswith("POST /v1/models")]
        assert uploads == [201]  # the model's bytes crossed the wire once
        # the report and the archive came from the bucket by signed URLs, checked against the API's digests
        redirected = {call for call, status in transport.statuses if status == 307}
        assert redirected == {f"GET /v1/audits/{job.id}/report", f"GET /v1/audits/{job.id}/archive"}
        listing = httpx.get(f"{s3_endpoint}/{bucket}", params={"list-type": "2"}).text
        assert f"audits/blobs/{job.request.model[:2]}/{job.request.model}" in listing
        assert f"audits/results/{job.id}/1/maps.zip" in listing
        lines = (tmp_path / "worker.log").read_text().splitlines()
        worker_log = [json.loads(line) for line in lines if line.startswith("{")]  # not Celery's banner
        messages = [record["message"] for record in worker_log if record["job_id"] == job.id]
        assert "audit started (attempt 1)" in messages, "the worker's JSON log names the job"
        assert any(message.startswith("audit succeeded after") for message in messages)
        for machine in ("data", "worker-data"):  # neither machine's disk holds what the other reads
            assert not any((tmp_path / machine / folder).exists() for folder in ("blobs", "results"))
        metrics = httpx.get(f"{url}/metrics").text  # scraped as Prometheus would
        for line in (
            'saliency_queue_depth{queue="audit-cpu"} 0.0',
            'http_requests_total{handler="/v1/audits/{job_id}",method="GET",status="2xx"}',
            "saliency_audit_duration_seconds_count",
        ):
            assert line in metrics, line
        assert _sample(metrics, 'saliency_jobs{state="succeeded"}') >= 1
        assert (
            _sample(metrics, 'saliency_upload_bytes_total{kind="model"}')
            >= trained_digits.onnx_dynamo.stat().st_size
        )
        with (
            AuditClient(url, "sa_000000000000_" + "x" * 43) as stranger,
            pytest.raises(ServiceError) as refused,
        ):
            stranger.job(job.id)
        assert refused.value.status == 401


def test_the_client_waits_out_429_and_its_retry_keeps_one_idempotency_key(
    trained_digits: TrainedDigits, tmp_path: Path
) -> None:
    env = {
        "SALIENCY_DATA_DIR": str(tmp_path / "data"),
        "SALIENCY_MAX_ACTIVE_JOBS": "1",
        "SALIENCY_RETRY_AFTER_S": "1",
    }
    with api_server(env, tmp_path / "api.log") as (url, _):
        transport = RecordingTransport()
        with AuditClient(url, transport=transport) as client:
            model = client.upload(ArtifactKind.model, trained_digits.onnx_legacy)[0].sha256
            probes = client.upload(ArtifactKind.probes, trained_digits.probes)[0].sha256
            busy = client.submit(AuditRequest(model=model, probes=probes, settings=SLOW))
            threading.Timer(4, client.cancel, args=[busy.id]).start()  # frees the tenant's one slot
            started = time.monotonic()
            queued = client.submit(AuditRequest(model=model, probes=probes, settings=FAST), "nightly-1")
            assert time.monotonic() - started >= 4
            submits = [status for call, status in transport.statuses if call == "POST /v1/audits"]
            assert submits[0] == 202 and 429 in submits and submits[-1] == 202
            assert (
                client.submit(AuditRequest(model=model, probes=probes, settings=FAST), "nightly-1").id
                == queued.id
            )
            assert client.wait(queued.id, timeout_s=240).state is JobState.succeeded


def _gate(url: str, model: Path, probes: Path, out: Path, *options: str) -> subprocess.CompletedProcess[str]:
    command = [str(VENV_BIN / "saliency-audit"), "submit", "--server", url, str(model), str(probes)]
    return subprocess.run(
        [*command, "--out", str(out), "--quiet", *options], capture_output=True, text=True, timeout=600
    )


def test_the_gates_exit_codes_tell_a_ci_system_what_happened(
    trained_digits: TrainedDigits, tmp_path: Path
) -> None:
    model, probes = trained_digits.onnx_dynamo, trained_digits.probes
    wrong_shape = tmp_path / "wrong.npz"
    np.savez(wrong_shape, x=np.zeros((8, 3, 32, 32), np.float32))
    fast = ("--tests", "cascading", "--wait", "--fail-on", "fail")
    with api_server({"SALIENCY_DATA_DIR": str(tmp_path / "data")}, tmp_path / "api.log") as (url, _):
        passing = _gate(url, model, probes, tmp_path / "pass", "--methods", "gradient,gradcam", *fast)
        assert passing.returncode == 0, passing.stderr
        assert "PASS" in passing.stdout and (tmp_path / "pass" / "report.html").is_file()
        assert {p.name for p in (tmp_path / "pass").iterdir()} == {"report.json", "report.html", "maps.zip"}
        failing = _gate(url, model, probes, tmp_path / "fail", "--methods", "gradient_x_input", *fast)
        assert failing.returncode == 1, failing.stderr
        assert "FAIL" in failing.stdout
        refused = _gate(url, model, wrong_shape, tmp_path / "refused", "--methods", "gradient", *fast)
        assert refused.returncode == 2 and "expects input of shape" in refused.stderr
        queued = _gate(
            url, model, probes, tmp_path / "queued", "--methods", "gradient", "--tests", "cascading"
        )
        assert queued.returncode == 0 and len(queued.stdout.strip()) == 32  # the job id, for a later step
    nobody = f"http://127.0.0.1:{free_port()}"
    unreachable = _gate(nobody, model, probes, tmp_path / "gone", "--wait", "--ride-out", "0")
    assert unreachable.returncode == 3 and "ConnectError" in unreachable.stderr
