"""Untrusted models never run in the API process: the embedded worker runs each audit in a child process
under a memory and a time limit, and a child that dies takes only its own job with it.

Against the real ``saliency-audit serve`` (and the app made from a ``Settings`` object, whose settings the
child must get from its parent, not from the environment).
"""

import io
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper

from service.api.app import create_app
from tests.conftest import TrainedDigits
from tests.e2e import poll, submit, upload
from tests.services import api_server, wait_until
from workers.core.config import Settings
from workers.core.store.database import make_engine
from workers.core.store.jobs import JobStore
from workers.worker.audit_process import MODULE

FAST = {"methods": ["gradient"], "tests": ["cascading"]}
# SmoothGrad's 50 noisy passes per map, 100 draws: minutes, still running when a test acts
SLOW = {"methods": ["smoothgrad"], "tests": ["cascading"], "draws": 100, "max_draws": 100}
FINISHED = {"succeeded", "failed", "cancelled"}
GIB = 1024**3


def _audit_processes(parent: int) -> list[int]:
    """Pids of the audit processes ``parent`` started (psutil is not installed: /proc is read)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent_pid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):  # it ended meanwhile
            continue
        if parent_pid == parent and MODULE.encode() in command:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie (ended, not yet reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _one_audit_process(parent: int) -> int:
    wait_until(lambda: len(_audit_processes(parent)) == 1, 60, "audit process")
    return _audit_processes(parent)[0]


def _probes(digits: TrainedDigits, count: int) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=digits.data.x_test[:count], y=digits.data.y_test[:count])
    return buffer.getvalue()


def _client_safe(error: dict) -> None:
    """A problem a client reads: no server path, no traceback."""
    assert "/" not in error["detail"] and "Traceback" not in error["detail"], error


def _memory_hog(bytes_per_image: int) -> bytes:
    """A valid classifier of the digits' 16 x 16 images that tiles each image ``bytes_per_image / 1024``
    times before averaging the copies away: onnx's checker passes it, running it allocates
    ``bytes_per_image`` per image."""
    weights = np.random.default_rng(0).normal(size=(256, 10)).astype(np.float32)
    initializers = [
        numpy_helper.from_array(weights, "weights"),
        numpy_helper.from_array(np.zeros(10, np.float32), "bias"),
        numpy_helper.from_array(np.array([1, bytes_per_image // (256 * 4), 1, 1], np.int64), "repeats"),
    ]
    nodes = [
        helper.make_node("Tile", ["x", "repeats"], ["copies"]),
        helper.make_node("ReduceMean", ["copies"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Flatten", ["mean"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "weights", "bias"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "memory_hog",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_a_killed_audit_process_fails_its_job_and_nothing_else(
    trained_digits: TrainedDigits, tmp_path: Path
) -> None:
    with (
        api_server({"SALIENCY_DATA_DIR": str(tmp_path / "data")}, tmp_path / "api.log") as (url, api),
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        model = upload(client, "/v1/models", trained_digits.onnx_legacy.read_bytes())
        probes = upload(client, "/v1/probe-sets", _probes(trained_digits, 12))
        doomed = submit(client, {"model": model, "probes": probes, "settings": SLOW})
        poll(client, doomed, {"running"}, timeout=60)
        os.kill(_one_audit_process(api.pid), signal.SIGKILL)  # as the kernel's OOM killer would
        job = poll(client, doomed, FINISHED, timeout=30)
        assert job["state"] == "failed" and job["attempts"] == 1
        assert job["error"]["title"] == "Audit process stopped"
        assert job["error"]["detail"] == (
            "the audit process was killed by signal 9 (SIGKILL), for example out of memory: the limit is "
            "8192 MiB"
        )
        _client_safe(job["error"])
        assert client.get("/healthz").is_success and api.poll() is None
        following = submit(client, {"model": model, "probes": probes, "settings": FAST})
        job = poll(client, following, FINISHED, timeout=120)
        assert job["state"] == "succeeded", job["error"]
        wait_until(lambda: _audit_processes(api.pid) == [], 10, "the audit process's exit")
    assert not any((tmp_path / "data" / "work").iterdir())  # the killed attempt's folder was removed


def test_an_audit_past_the_hard_time_limit_is_killed(trained_digits: TrainedDigits, tmp_path: Path) -> None:
    env = {
        "SALIENCY_DATA_DIR": str(tmp_path / "data"),
        "SALIENCY_HARD_TIME_LIMIT_S": "12",  # the audit process starts in about 6 s, then draws for minutes
        "SALIENCY_SOFT_TIME_LIMIT_S": "6",  # Celery's; the embedded worker enforces the hard limit
    }
    with (
        api_server(env, tmp_path / "api.log") as (url, api),
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        model = upload(client, "/v1/models", trained_digits.onnx_legacy.read_bytes())
        probes = upload(client, "/v1/probe-sets", _probes(trained_digits, 12))
        started = time.monotonic()
        location = submit(client, {"model": model, "probes": probes, "settings": SLOW})
        job = poll(client, location, FINISHED, timeout=60)
        assert 12 <= time.monotonic() - started < 40
        assert job["state"] == "failed"
        assert job["error"]["title"] == "Audit process stopped"
        assert job["error"]["detail"] == "the audit ran past the time limit of 12 s"
        assert client.get("/healthz").is_success and api.poll() is None
        assert _audit_processes(api.pid) == []  # killed and reaped before the job was settled


def test_an_audit_past_the_memory_limit_fails_cleanly(
    trained_digits: TrainedDigits,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The app made from a Settings object: the audit process finds the job store, the files and its
    memory limit in the settings its parent hands it, not in the environment (which says otherwise)."""
    monkeypatch.setenv("SALIENCY_DATA_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("SALIENCY_AUDIT_MEMORY_LIMIT_MIB", "65536")
    settings = Settings(data_dir=tmp_path / "data", auth="local", audit_memory_limit_mib=2048)
    with TestClient(create_app(settings)) as client:
        # 3 GiB per image: beyond the limit, not beyond what the machine could give without it
        model = upload(client, "/v1/models", _memory_hog(3 * GIB))
        probes = upload(client, "/v1/probe-sets", _probes(trained_digits, 4))
        location = submit(client, {"model": model, "probes": probes, "settings": FAST})
        job = poll(client, location, FINISHED, timeout=120)
        assert client.get("/healthz").is_success
    assert job["state"] == "failed" and job["error"]["type"] == "/problems/audit-process-stopped"
    assert "needed more memory than its process may use (2048 MiB" in job["error"]["detail"]
    _client_safe(job["error"])
    # the audit process's log (this test's stderr) keeps the allocator's own words
    assert "can't allocate memory: you tried to allocate 3221225472 bytes" in capfd.readouterr().err


def test_stopping_the_service_kills_its_audit_process_and_leaves_the_job_to_the_lease(
    trained_digits: TrainedDigits, tmp_path: Path
) -> None:
    with (
        api_server({"SALIENCY_DATA_DIR": str(tmp_path / "data")}, tmp_path / "api.log") as (url, api),
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        model = upload(client, "/v1/models", trained_digits.onnx_legacy.read_bytes())
        probes = upload(client, "/v1/probe-sets", _probes(trained_digits, 12))
        location = submit(client, {"model": model, "probes": probes, "settings": SLOW})
        audit = _one_audit_process(api.pid)
        api.send_signal(signal.SIGTERM)  # uvicorn's graceful shutdown: the lifespan stops the dispatcher
        api.wait(timeout=10)
    assert not _alive(audit)
    store = JobStore(make_engine(f"sqlite:///{tmp_path / 'data' / 'jobs.sqlite3'}"))
    job = store.jobs.get_job(location.rsplit("/", 1)[1])
    store.close()
    assert job is not None and job.state in ("queued", "running") and job.error is None


@pytest.mark.parametrize(("limit_mib", "expected"), [("3000", 3000 * 1024**2), ("0", resource.RLIM_INFINITY)])
def test_celery_pool_children_run_under_the_same_memory_limit(limit_mib: str, expected: int) -> None:
    """0 lifts the limit for GPU hosts, whose driver reserves more address space than any sane limit."""
    probe = (
        "import resource; from celery.signals import worker_process_init; import workers.worker.celery_app; "
        "worker_process_init.send(sender=None); print(resource.getrlimit(resource.RLIMIT_AS)[0])"
    )
    env = os.environ | {"SALIENCY_AUDIT_MEMORY_LIMIT_MIB": limit_mib}
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, check=True, text=True)
    assert int(run.stdout) == expected


def test_the_default_memory_budget_stays_within_the_address_space_left() -> None:
    """Batch sizes follow from the budget: planned beyond the limit, a normal audit would fail."""
    probe = (
        "from workers.worker.audit_process import limit_memory; limit_memory(2048); import torch; "
        "from workers.engine.budget import default_budget; print(default_budget(torch.device('cpu')))"
    )
    output = subprocess.run([sys.executable, "-c", probe], capture_output=True, check=True, text=True)
    assert 0 < int(output.stdout) < GIB
