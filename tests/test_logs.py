"""The service's log as JSON lines: the request that queued a job and the audit process that ran it both
name the job, and the request's line names the client's X-Request-ID."""

import json
from pathlib import Path

import httpx

from tests.conftest import TrainedDigits
from tests.services import api_server, wait_until

OCTET = {"Content-Type": "application/octet-stream"}


def test_json_log_lines_name_the_request_and_the_job_across_processes(
    trained_digits: TrainedDigits, tmp_path: Path
) -> None:
    env = {"SALIENCY_DATA_DIR": str(tmp_path / "data"), "SALIENCY_LOG_FORMAT": "json"}
    log = tmp_path / "api.log"
    with api_server(env, log) as (url, server), httpx.Client(base_url=url) as client:
        model = client.post("/v1/models", content=trained_digits.onnx_legacy.read_bytes(), headers=OCTET)
        probes = client.post("/v1/probe-sets", content=trained_digits.probes.read_bytes(), headers=OCTET)
        body = {
            "model": model.json()["sha256"],
            "probes": probes.json()["sha256"],
            "settings": {"methods": ["gradient"], "tests": ["cascading"]},
        }
        job = client.post("/v1/audits", json=body, headers={"X-Request-ID": "pipeline-run-42"}).json()
        wait_until(lambda: client.get(f"/v1/audits/{job['id']}").json()["state"] == "succeeded", 300, "audit")
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert records and {"timestamp", "level", "logger", "pid", "message"} <= set(records[0])
    mine = [record for record in records if record["job_id"] == job["id"]]
    queued = next(record for record in mine if record["message"].startswith("audit queued"))
    assert queued["request_id"] == "pipeline-run-42" and queued["pid"] == server.pid
    ran = next(record for record in mine if record["message"].startswith("audit succeeded after"))
    assert ran["pid"] != server.pid  # written by the audit's own process
    assert ran["request_id"] is None
