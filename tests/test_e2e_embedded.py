"""End to end through the embedded default: ``saliency-audit serve`` with no broker and no database
configured runs the worker in-process on a SQLite store; a client talks HTTP to it with httpx."""

from pathlib import Path

import httpx

from tests.conftest import TrainedDigits
from tests.e2e import FAST_SETTINGS, check_results, poll, submit, training_npz, upload
from tests.services import api_server
from tests.test_api import png_zip


def test_the_embedded_service_runs_an_audit_of_png_probes_and_deletes_it(
    trained_digits: TrainedDigits, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    with (
        api_server({"SALIENCY_DATA_DIR": str(data_dir)}, tmp_path / "api.log") as (url, _),
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        ready = client.get("/readyz").json()
        assert ready["checks"] == {"database": "ok", "embedded": "ok", "storage": "ok"}
        model = upload(client, "/v1/models", trained_digits.onnx_legacy.read_bytes())
        probes = upload(client, "/v1/probe-sets", png_zip(trained_digits.data.x_test[:12]))
        location = submit(client, {"model": model, "probes": probes, "settings": FAST_SETTINGS})
        job = poll(client, location, {"succeeded", "failed", "cancelled"})
        assert job["state"] == "succeeded", job["error"]
        report = check_results(client, location, job, tmp_path)
        results = data_dir / "results" / job["id"]
        assert results.is_dir()
        assert client.delete(location).status_code == 204  # the client removes its results
        assert client.get(location).status_code == 404 and client.get(f"{location}/report").status_code == 404
        assert not results.exists()
    assert report.probes.count == 12
    assert (data_dir / "jobs.sqlite3").exists()


def test_a_job_running_when_the_embedded_service_was_killed_completes_after_a_restart(
    trained_digits: TrainedDigits, tmp_path: Path
) -> None:
    env = {
        "SALIENCY_DATA_DIR": str(tmp_path / "data"),
        "SALIENCY_LEASE_S": "3",
        "SALIENCY_SWEEP_INTERVAL_S": "0.5",
    }
    training = training_npz(*trained_digits.data.twin_training_set())
    with (
        api_server(env, tmp_path / "first.log") as (url, first),
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        body = {
            "model": upload(client, "/v1/models", trained_digits.onnx_dynamo.read_bytes()),
            "probes": upload(client, "/v1/probe-sets", trained_digits.probes.read_bytes()),
            "training_data": upload(client, "/v1/training-sets", training),
            # trains a twin and a control: seconds
            "settings": {
                "methods": ["gradient"],
                "tests": ["data"],
                "training": {"models": 1, "max_models": 1},
            },
        }
        location = submit(client, body)
        poll(client, location, {"running"})
        first.kill()  # the whole service dies mid-audit
        first.wait()
    with (
        api_server(env, tmp_path / "second.log") as (url, _),
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        job = poll(client, location, {"succeeded", "failed", "cancelled"})
        assert job["state"] == "succeeded", job["error"]
        assert job["attempts"] == 2
        check_results(client, location, job, tmp_path)
