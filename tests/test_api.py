"""The HTTP API in-process, with its real job store and a real Redis broker but no worker: jobs stay queued.

Every client mistake must be a 4xx problem+json that says what is wrong, and must lose nothing.
"""

import base64
import io
import json
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.api.app import create_app
from tests.conftest import TrainedDigits
from tests.services import free_port
from workers.core import problems
from workers.core.audit_settings import METHOD_NAMES, RandomizationTest
from workers.core.config import Settings
from workers.core.requests import AuditRequest
from workers.core.store.database import make_engine
from workers.core.store.jobs import JobStore
from workers.core.store.states import JobState

OCTET = {"Content-Type": "application/octet-stream"}


def make_client(tmp_path: Path, database_url: str, broker_url: str, **overrides: object) -> TestClient:
    """The app in-process; requests without an API key act as the local tenant unless ``auth`` says
    otherwise."""
    settings = Settings(
        **{
            "data_dir": tmp_path / "data",
            "database_url": database_url,
            "broker_url": broker_url,
            "auth": "local",
        }
        | overrides
    )
    return TestClient(create_app(settings))


@pytest.fixture
def client(tmp_path: Path, database_url: str, redis_url: str) -> Iterator[TestClient]:
    unworked = redis_url.rsplit("/", 1)[0] + "/1"  # a database no worker of the end-to-end tests reads
    with make_client(
        tmp_path, database_url, unworked, max_upload_bytes=2_000_000, max_active_jobs=50
    ) as test_client:
        yield test_client


@pytest.fixture
def uploaded(client: TestClient, trained_digits: TrainedDigits) -> dict[str, str]:
    model = client.post("/v1/models", content=trained_digits.onnx_dynamo.read_bytes(), headers=OCTET)
    probes = client.post("/v1/probe-sets", content=trained_digits.probes.read_bytes(), headers=OCTET)
    assert model.status_code == 201 and probes.status_code == 201
    return {"model": model.json()["sha256"], "probes": probes.json()["sha256"]}


def _problem(response: httpx.Response, status: int, detail_part: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and detail_part in body["detail"], body
    return body


def png_zip(images: np.ndarray, corrupt: bool = False) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for index, image in enumerate(images):
            png = io.BytesIO()
            Image.fromarray((image[0] * 255).astype(np.uint8)).save(png, format="PNG")
            data = png.getvalue()
            bundle.writestr(f"{index:03d}.png", data[: len(data) // 2] if corrupt and index == 1 else data)
    return buffer.getvalue()


# --- uploads --------------------------------------------------------------------------------------------


def test_a_model_is_stored_once_by_its_sha256(client: TestClient, trained_digits: TrainedDigits) -> None:
    data = trained_digits.onnx_dynamo.read_bytes()
    first = client.post("/v1/models", content=data, headers=OCTET)
    second = client.post("/v1/models", content=data, headers=OCTET)
    assert (first.status_code, second.status_code) == (201, 200)
    body = first.json()
    assert body["format"] == "onnx" and body["size_bytes"] == len(data)
    assert body["details"]["inputs"][0]["shape"][1:] == [1, 16, 16]
    assert second.json()["sha256"] == body["sha256"] and first.headers["location"] == body["href"]
    assert client.get(body["href"]).json() == body
    blobs = [p for p in (client.app.state.runtime.storage.root / "blobs").rglob("*") if p.is_file()]
    assert len(blobs) == 1


def test_a_file_that_is_not_a_model_is_refused_at_upload(client: TestClient) -> None:
    _problem(client.post("/v1/models", content=b"hello, world", headers=OCTET), 422, "not an ONNX")


def test_a_pickled_checkpoint_is_refused_at_upload(client: TestClient) -> None:
    _problem(client.post("/v1/models", content=b"\x80\x04K\x01.", headers=OCTET), 422, "pickle")


def test_a_damaged_onnx_file_is_refused_at_upload(client: TestClient, trained_digits: TrainedDigits) -> None:
    data = trained_digits.onnx_legacy.read_bytes()
    _problem(client.post("/v1/models", content=data[: len(data) // 2], headers=OCTET), 422, "ONNX")


def test_an_oversize_upload_is_refused_from_its_content_length(client: TestClient) -> None:
    declared = OCTET | {"Content-Length": "2000001"}  # refused before a byte of the body is read
    _problem(client.post("/v1/models", content=b"\x08\x07", headers=declared), 413, "limited to 2000000")


def test_an_oversize_streamed_upload_is_cut_off_and_leaves_nothing(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts while streaming
        for _ in range(30):
            yield b"\x08" * 100_000

    _problem(client.post("/v1/models", content=chunks(), headers=OCTET), 413, "limited to")
    uploads = client.app.state.runtime.storage.root / "uploads"
    assert list(uploads.iterdir()) == []


def test_a_multipart_form_is_refused_with_the_right_command(client: TestClient) -> None:
    response = client.post("/v1/models", files={"file": ("m.onnx", b"\x08\x07")})
    _problem(response, 415, "--data-binary")


def test_a_zip_of_images_is_a_probe_set(client: TestClient, trained_digits: TrainedDigits) -> None:
    response = client.post("/v1/probe-sets", content=png_zip(trained_digits.data.x_test[:5]), headers=OCTET)
    assert response.status_code == 201
    assert response.json()["format"] == "zip" and response.json()["details"] == {
        "images": 5,
        "labelled": False,
        "shape": [1, 16, 16],
        "channels": 1,
    }


def test_a_corrupt_image_is_refused_at_upload(client: TestClient, trained_digits: TrainedDigits) -> None:
    data = png_zip(trained_digits.data.x_test[:3], corrupt=True)
    _problem(client.post("/v1/probe-sets", content=data, headers=OCTET), 422, "not a readable PNG or JPEG")


def test_a_pickled_array_is_refused_at_upload(client: TestClient) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _problem(client.post("/v1/probe-sets", content=buffer.getvalue(), headers=OCTET), 422, "probes")


def test_unreadable_arrays_are_refused_at_upload(client: TestClient) -> None:
    objects = io.BytesIO()
    np.savez(objects, x=np.array([{"a": 1}, {"b": 2}], dtype=object))
    _problem(client.post("/v1/probe-sets", content=objects.getvalue(), headers=OCTET), 422, "not a readable")
    damaged = io.BytesIO()
    np.savez(damaged, x=np.arange(4000, dtype=np.float32).reshape(10, 1, 20, 20))
    data = bytearray(damaged.getvalue())
    data[200:260] = bytes(60)  # inside the stored member: its CRC no longer matches
    _problem(client.post("/v1/probe-sets", content=bytes(data), headers=OCTET), 422, "not a readable")
    assert list((client.app.state.runtime.storage.root / "uploads").iterdir()) == []


def test_an_odd_filename_only_names_the_file(client: TestClient, trained_digits: TrainedDigits) -> None:
    for name in ("..", ".", "../../etc/passwd"):
        response = client.post(
            "/v1/probe-sets",
            params={"filename": name},
            content=trained_digits.probes.read_bytes(),
            headers=OCTET,
        )
        assert response.status_code in (200, 201)


def test_training_data_needs_labels(client: TestClient, trained_digits: TrainedDigits) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, x=trained_digits.data.x_train[:60])
    _problem(client.post("/v1/training-sets", content=buffer.getvalue(), headers=OCTET), 422, "needs labels")


def test_an_unknown_artifact_is_404(client: TestClient) -> None:
    _problem(client.get(f"/v1/models/{'0' * 64}"), 404, "does not exist")


# --- jobs -----------------------------------------------------------------------------------------------


def test_a_submitted_audit_is_accepted_at_once(client: TestClient, uploaded: dict[str, str]) -> None:
    response = client.post("/v1/audits", json=uploaded)
    assert response.status_code == 202
    job = response.json()
    assert job["state"] == "queued" and job["queue"] == "cpu" and "queued" in job["timestamps"]
    assert response.headers["location"] == f"/v1/audits/{job['id']}" == job["links"]["self"]
    assert job["links"]["report_html"] == f"/v1/audits/{job['id']}/report.html"
    assert int(response.headers["retry-after"]) > 0
    polled = client.get(response.headers["location"])
    assert polled.json()["id"] == job["id"] and polled.headers["etag"] == response.headers["etag"]


def test_an_unchanged_job_answers_304_to_its_etag(client: TestClient, uploaded: dict[str, str]) -> None:
    location = client.post("/v1/audits", json=uploaded).headers["location"]
    etag = client.get(location).headers["etag"]
    assert client.get(location, headers={"If-None-Match": etag}).status_code == 304
    client.post(f"{location}/cancel")
    assert client.get(location, headers={"If-None-Match": etag}).status_code == 200


def test_a_poll_shows_a_change_made_by_another_process_at_once(
    client: TestClient, uploaded: dict[str, str], database_url: str
) -> None:
    """Polls answer from a rendering per version; a worker's change (another store on the same
    database) bumps the version, so the next poll renders it."""
    location = client.post("/v1/audits", json=uploaded).headers["location"]
    job_id = location.rsplit("/", 1)[1]
    first = client.get(location)
    assert client.get(location).content == first.content
    worker_store = JobStore(make_engine(database_url))
    claimed = worker_store.attempts.claim(job_id)
    assert claimed is not None
    worker_store.attempts.report_progress(job_id, claimed.attempts, "gradient: trained model", 1, 9)
    polled = client.get(location)
    assert polled.headers["etag"] != first.headers["etag"]
    assert polled.json()["state"] == "running"
    assert polled.json()["progress"] == {"phase": "gradient: trained model", "done": 1, "total": 9}


def test_a_retry_with_the_same_idempotency_key_returns_the_same_job(
    client: TestClient, uploaded: dict[str, str]
) -> None:
    headers = {"Idempotency-Key": "retry-1"}
    first = client.post("/v1/audits", json=uploaded, headers=headers)
    spelled_out = uploaded | {"settings": {"seed": 0}}  # the default, stated: the same request
    second = client.post("/v1/audits", json=spelled_out, headers=headers)
    assert second.status_code == 202 and second.json()["id"] == first.json()["id"]
    assert second.headers["idempotent-replayed"] == "true"
    other = client.post("/v1/audits", json=uploaded | {"settings": {"seed": 1}}, headers=headers)
    _problem(other, 422, "different request body")
    assert len(client.get("/v1/audits").json()["items"]) == 1


def test_an_audit_of_artifacts_never_uploaded_is_refused(
    client: TestClient, uploaded: dict[str, str]
) -> None:
    _problem(client.post("/v1/audits", json=uploaded | {"model": "f" * 64}), 422, "upload it to /v1/models")
    swapped = {"model": uploaded["probes"], "probes": uploaded["model"]}
    _problem(client.post("/v1/audits", json=swapped), 422, "no model artifact")


def test_invalid_settings_are_refused_with_the_field_named(
    client: TestClient, uploaded: dict[str, str]
) -> None:
    body = _problem(
        client.post("/v1/audits", json=uploaded | {"settings": {"methods": ["lime"]}}),
        422,
        "settings.methods",
    )
    assert "unknown saliency method 'lime'" in body["detail"] and body["errors"]
    assert "available: edge_detector, gradcam, gradient," in body["detail"]
    body = _problem(
        client.post("/v1/audits", json=uploaded | {"settings": {"tests": ["sideways"]}}),
        422,
        "settings.tests",
    )
    assert all(f"'{test.value}'" in body["detail"] for test in RandomizationTest)  # every valid name
    _problem(client.post("/v1/audits", json=uploaded | {"settings": {"tests": ["data"]}}), 422, "twin")
    _problem(
        client.post("/v1/audits", content=b"{", headers={"Content-Type": "application/json"}), 422, "JSON"
    )


def test_a_model_counted_twice_in_the_data_test_is_refused(
    client: TestClient, uploaded: dict[str, str]
) -> None:
    data = {"settings": {"tests": ["data"]}}
    twice = uploaded | data | {"twins": [uploaded["model"]]}  # the audited model as its own twin
    _problem(client.post("/v1/audits", json=twice), 422, "must be different artifacts")
    many = uploaded | data | {"twins": [f"{k:064x}" for k in range(31)]}
    _problem(client.post("/v1/audits", json=many), 422, "twins")


def test_a_request_stored_with_one_twin_and_control_still_reads() -> None:
    """Job rows written before twins and controls became lists name one of each, or null."""
    base = {"model": "a" * 64, "probes": "b" * 64, "settings": {"tests": ["data"]}}
    old = AuditRequest.model_validate(base | {"twin": "c" * 64, "control": "d" * 64, "training_data": None})
    assert (old.twins, old.controls) == (["c" * 64], ["d" * 64])
    trained = AuditRequest.model_validate(base | {"twin": None, "control": None, "training_data": "e" * 64})
    assert (trained.twins, trained.controls, trained.training_data) == ([], [], "e" * 64)


def test_probes_that_do_not_fit_the_preprocessing_are_refused_at_submit(
    client: TestClient, uploaded: dict[str, str]
) -> None:
    body = uploaded | {"settings": {"preprocessing": {"size": [32, 32]}}}
    _problem(client.post("/v1/audits", json=body), 422, "arrays are never resized")


def test_cancelling_a_queued_audit_cancels_it_and_a_second_cancel_conflicts(
    client: TestClient, uploaded: dict[str, str]
) -> None:
    location = client.post("/v1/audits", json=uploaded).headers["location"]
    cancelled = client.post(f"{location}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["state"] == "cancelled"
    _problem(client.post(f"{location}/cancel"), 409, "is cancelled")
    _problem(client.get(f"{location}/report"), 409, "has no results")


def test_the_report_of_a_queued_audit_is_a_conflict(client: TestClient, uploaded: dict[str, str]) -> None:
    location = client.post("/v1/audits", json=uploaded).headers["location"]
    response = client.get(f"{location}/archive")
    _problem(response, 409, "poll it until it has succeeded")
    assert "retry-after" in response.headers


def test_unknown_audits_are_404(client: TestClient) -> None:
    for response in (client.get("/v1/audits/nope"), client.post("/v1/audits/nope/cancel")):
        _problem(response, 404, "audit nope does not exist")
    _problem(client.get("/v1/audits/nope/report"), 404, "does not exist")


def test_the_list_pages_with_a_cursor_and_filters_by_state(
    client: TestClient, uploaded: dict[str, str]
) -> None:
    ids = [
        client.post("/v1/audits", json=uploaded | {"settings": {"seed": s}}).json()["id"] for s in range(5)
    ]
    client.post(f"/v1/audits/{ids[0]}/cancel")
    seen, cursor = [], None
    while True:
        page = client.get("/v1/audits", params={"limit": 2} | ({"cursor": cursor} if cursor else {})).json()
        seen += [job["id"] for job in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert seen == ids[::-1]
    queued = client.get("/v1/audits", params={"state": ["queued", "running"]}).json()["items"]
    assert [job["id"] for job in queued] == ids[:0:-1]
    _problem(client.get("/v1/audits", params={"cursor": "garbage"}), 400, "cursor")
    huge = base64.urlsafe_b64encode(b"seq:99999999999999999999").decode()
    _problem(client.get("/v1/audits", params={"cursor": huge}), 400, "cursor")
    _problem(client.get("/v1/audits", params={"state": "done"}), 422, "state")


# --- health, dispatch failures, OpenAPI ---------------------------------------------------------------------


def test_ready_when_database_broker_and_storage_answer(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {
        "database": "ok",
        "celery": "ok",
        "storage": "ok",
    }


def test_without_a_broker_nothing_is_accepted_and_readiness_names_it(
    tmp_path: Path, database_url: str, trained_digits: TrainedDigits
) -> None:
    dead_broker = f"redis://127.0.0.1:{free_port()}/0"
    with make_client(tmp_path, database_url, dead_broker) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"] == {  # which one, not its error text
            "database": "ok",
            "celery": "unavailable",
            "storage": "ok",
        }
        model = client.post("/v1/models", content=trained_digits.onnx_legacy.read_bytes(), headers=OCTET)
        probes = client.post("/v1/probe-sets", content=trained_digits.probes.read_bytes(), headers=OCTET)
        body = {"model": model.json()["sha256"], "probes": probes.json()["sha256"]}
        _problem(client.post("/v1/audits", json=body), 503, "nothing was queued")
        assert client.get("/v1/audits").json()["items"] == []


def test_the_exported_openapi_document_matches_the_app() -> None:
    exported = Path(__file__).parents[1] / "openapi" / "openapi.json"
    current = subprocess.run(
        [sys.executable, "-m", "workers.cli.main", "openapi"], capture_output=True, text=True, check=True
    ).stdout
    assert exported.read_text() == current, "run: saliency-audit openapi > openapi/openapi.json"


def _document() -> dict:
    return json.loads((Path(__file__).parents[1] / "openapi" / "openapi.json").read_text())


def _operations(document: dict) -> Iterator[tuple[str, dict]]:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield f"{method.upper()} {path}", operation


def test_every_operation_has_a_clean_unique_id() -> None:
    """Generated clients name their functions after operation ids: a verb and a resource, never FastAPI's
    path-derived ``submit_v1_audits_post``."""
    ids = [operation["operationId"] for _, operation in _operations(_document())]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)+", id_) and "v1" not in id_ for id_ in ids), ids
    assert {"submit_audit", "get_audit", "get_report", "get_report_html", "get_archive"} <= set(ids)


def test_results_are_typed_and_the_report_schema_is_the_engines() -> None:
    document = _document()
    content = {
        path: methods["get"]["responses"]["200"]["content"]
        for path, methods in document["paths"].items()
        if path.startswith("/v1/audits/{job_id}/") and "get" in methods
    }
    report_schema = content["/v1/audits/{job_id}/report"]["application/json"]["schema"]
    assert report_schema == {"$ref": "#/components/schemas/AuditReport"}
    assert content["/v1/audits/{job_id}/archive"] == {
        "application/zip": {"schema": {"type": "string", "format": "binary"}}
    }
    assert content["/v1/audits/{job_id}/report.html"] == {"text/html": {"schema": {"type": "string"}}}
    assert "report_html" in document["components"]["schemas"]["JobLinks"]["required"]
    # the report's components are openapi/report.schema.json, the engine's model (FastAPI omits null defaults)
    exported = json.loads((Path(__file__).parents[1] / "openapi" / "report.schema.json").read_text())
    models = exported.pop("$defs") | {"AuditReport": exported}
    text = json.dumps(models).replace("#/$defs/", "#/components/schemas/")
    for name, schema in json.loads(text).items():
        for field in schema.get("properties", {}).values():
            if field.get("default", ...) is None:
                del field["default"]
        assert document["components"]["schemas"][name] == schema, name
    methods = document["components"]["schemas"]["AuditSettings"]["properties"]["methods"]["anyOf"][0]
    assert methods["items"] == {"$ref": "#/components/schemas/MethodName"}
    assert document["components"]["schemas"]["MethodName"]["enum"] == list(METHOD_NAMES)


def test_every_header_the_service_sends_is_declared() -> None:
    document = _document()
    for name, operation in _operations(document):
        for status, response in operation["responses"].items():
            headers = response["headers"]
            assert headers["X-Request-ID"] == {"$ref": "#/components/headers/X-Request-ID"}, (name, status)
            required = {header for header, spec in headers.items() if spec.get("required")}
            if status == "307":
                assert {"Location", "X-Checksum-SHA256", "Repr-Digest"} <= required, name
            if status in ("429", "503", "507") and name != "GET /readyz":
                assert "Retry-After" in required, (name, status)
    responses = {name: operation["responses"] for name, operation in _operations(document)}
    assert {"Location", "ETag"} <= set(responses["POST /v1/audits"]["202"]["headers"])
    assert "Retry-After" in responses["POST /v1/audits"]["202"]["headers"]
    assert "ETag" in responses["GET /v1/audits/{job_id}"]["304"]["headers"]
    assert {"X-Checksum-SHA256", "Repr-Digest", "Content-Length"} <= set(
        responses["GET /v1/audits/{job_id}/archive"]["200"]["headers"]
    )


def test_the_service_does_not_import_torch() -> None:
    code = "import sys, service.api.app, service.api.routes.audits; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_job_a_passing_fault_failed_runs_again_when_submitted_with_its_key(
    client: TestClient, uploaded: dict[str, str], database_url: str
) -> None:
    headers = {"Idempotency-Key": "interrupted-1"}
    first = client.post("/v1/audits", json=uploaded, headers=headers).json()
    store = JobStore(make_engine(database_url))
    claimed = store.attempts.claim(first["id"])
    assert claimed is not None
    interrupted = problems.AUDIT_INTERRUPTED.body("the service's disk was full at each of 1 attempts")
    assert (
        store.attempts.release(first["id"], claimed.attempts, max_attempts=1, error=interrupted)
        is JobState.failed
    )
    assert client.get(f"/v1/audits/{first['id']}").json()["state"] == "failed"
    again = client.post("/v1/audits", json=uploaded, headers=headers)
    assert again.status_code == 202 and again.json()["id"] == first["id"]
    assert again.json()["state"] == "queued" and again.json()["attempts"] == 0
    refused = problems.AUDIT_REFUSED.body("probes contain NaN")
    claimed = store.attempts.claim(first["id"])
    assert claimed is not None and store.attempts.finish(
        first["id"], JobState.failed, attempt=1, error=refused
    )
    assert client.post("/v1/audits", json=uploaded, headers=headers).json()["state"] == "failed"  # for good
