"""Client steps shared by the end-to-end tests: upload, submit, poll, download, check."""

import hashlib
import io
import json
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np

from workers.core.report import AuditReport

OCTET = {"Content-Type": "application/octet-stream"}
# what differs between two runs of the same audit: timings, and the names the files were uploaded under
RUN_SPECIFIC = {
    "seconds": True,
    "created_at": True,
    "memory": True,
    "model": {"filename"},
    "probes": {"filename"},
}
FAST_SETTINGS = {"methods": ["gradient", "gradcam"], "tests": ["cascading"]}


def training_npz(x: np.ndarray, y: np.ndarray) -> bytes:
    """A labelled training set as the service takes it: one ``.npz`` with ``x`` and ``y``."""
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y)
    return buffer.getvalue()


def upload(client: httpx.Client, route: str, data: bytes) -> str:
    response = client.post(route, content=data, headers=OCTET)
    assert response.status_code in (200, 201), response.text
    return response.json()["sha256"]


def submit(client: httpx.Client, body: dict, key: str | None = None) -> str:
    response = client.post("/v1/audits", json=body, headers={"Idempotency-Key": key} if key else {})
    assert response.status_code == 202, response.text
    return response.headers["location"]


def poll(client: httpx.Client, location: str, states: set[str], timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(location).json()
        if job["state"] in states:
            return job
        time.sleep(0.2)
    raise AssertionError(f"{location} still {job['state']} after {timeout} s: {job}")


def check_results(client: httpx.Client, location: str, job: dict, out: Path) -> AuditReport:
    """The report and the archive are complete, and match the sizes and checksums the job and headers give."""
    report_response = client.get(f"{location}/report")
    archive_response = client.get(f"{location}/archive")
    for response, kind in ((report_response, "report"), (archive_response, "archive")):
        assert response.status_code == 200
        digest = hashlib.sha256(response.content).hexdigest()
        assert response.headers["x-checksum-sha256"] == digest == job["result"][f"{kind}_sha256"]
        assert (
            int(response.headers["content-length"]) == len(response.content) == job["result"][f"{kind}_size"]
        )
    report = AuditReport.model_validate_json(report_response.content)
    requested = job["request"]["settings"]
    assert [m.name for m in report.methods] == requested["methods"]
    assert all(test.test in requested["tests"] for m in report.methods for test in m.tests)
    with zipfile.ZipFile(io.BytesIO(archive_response.content)) as archive:
        assert archive.testzip() is None
        names = set(archive.namelist())
        assert json.loads(archive.read("report.json")) == json.loads(report_response.content)
        archive_html = archive.read("report.html") if "report.html" in names else None
    assert {"report.json", "manifest.json", "inputs.npy"} <= names and any(
        n.startswith("maps/gradient/") for n in names
    ), names
    html = client.get(f"{location}/report.html")
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert html.headers["content-disposition"].startswith("inline")
    assert html.headers["x-checksum-sha256"] == hashlib.sha256(html.content).hexdigest()
    assert {"report.html", "figures/verdicts.png"} <= names and archive_html == html.content
    (out / "maps.zip").write_bytes(archive_response.content)
    return report


def report_numbers(report: AuditReport) -> dict:
    """Everything a report says but what differs between two runs of the same audit."""
    return report.model_dump(mode="json", exclude=RUN_SPECIFIC | {"methods": True}) | {
        "methods": [method.model_dump(mode="json", exclude={"seconds"}) for method in report.methods]
    }
