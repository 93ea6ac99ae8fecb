"""API keys and tenants, per-tenant limits and request caps, against the app with its real job store.

Every job, artifact and idempotency key belongs to a tenant: another tenant's ids are not found, a revoked
key is refused, a tenant over its limits is told when to come back.
"""

import io
import os
import sqlite3
import subprocess
import time
import zipfile
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import TrainedDigits
from tests.services import VENV_BIN
from tests.test_api import OCTET, make_client
from workers.core.store.keys import Scope


@pytest.fixture
def app_client(tmp_path: Path, redis_url: str) -> Iterator[TestClient]:
    """Keys required (as `saliency-audit serve` on a public address); jobs stay queued (no worker)."""
    unworked = redis_url.rsplit("/", 1)[0] + "/1"
    with make_client(tmp_path, f"sqlite:///{tmp_path / 'jobs.sqlite3'}", unworked, auth="keys") as client:
        yield client


def _token(client: TestClient, tenant: str, *scopes: Scope) -> dict[str, str]:
    _, token = client.app.state.runtime.keys.create(
        tenant, "test", frozenset(scopes or (Scope.read, Scope.submit))
    )
    return {"Authorization": f"Bearer {token}"}


def _problem(response: httpx.Response, status: int, fragment: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert fragment in body["detail"] and body["type"].startswith("/problems/"), body
    return body


def _upload_and_submit(client: TestClient, auth: dict[str, str], digits: TrainedDigits) -> tuple[dict, str]:
    model = client.post("/v1/models", content=digits.onnx_dynamo.read_bytes(), headers=OCTET | auth)
    probes = client.post("/v1/probe-sets", content=digits.probes.read_bytes(), headers=OCTET | auth)
    assert model.status_code == 201 and probes.status_code == 201, (model.text, probes.text)
    body = {"model": model.json()["sha256"], "probes": probes.json()["sha256"]}
    response = client.post("/v1/audits", json=body, headers=auth | {"Idempotency-Key": "nightly"})
    assert response.status_code == 202, response.text
    return body, response.headers["location"]


def test_requests_without_a_valid_key_are_refused(app_client: TestClient) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer sa_000000000000_" + "x" * 43},
        {"Authorization": "Basic eDp5"},
    ):
        body = _problem(app_client.get("/v1/audits", headers=headers), 401, "")
        assert body["type"] == "/problems/unauthorized"
    assert app_client.get("/v1/audits").headers["www-authenticate"].startswith("Bearer")
    assert app_client.get("/healthz").status_code == 200  # probes need no key


def test_another_tenants_ids_answer_404(app_client: TestClient, trained_digits: TrainedDigits) -> None:
    alice, bob = _token(app_client, "alice"), _token(app_client, "bob")
    body, location = _upload_and_submit(app_client, alice, trained_digits)
    assert app_client.get(location, headers=alice).status_code == 200
    for method, path in (
        ("GET", location),
        ("POST", f"{location}/cancel"),
        ("DELETE", location),
        ("GET", f"{location}/report"),
        ("GET", f"{location}/archive"),
        ("GET", f"/v1/models/{body['model']}"),
        ("GET", f"/v1/probe-sets/{body['probes']}"),
    ):
        _problem(app_client.request(method, path, headers=bob), 404, "does not exist")
    assert app_client.get("/v1/audits", headers=bob).json()["items"] == []
    # bob cannot audit alice's uploads by their hash, and his idempotency keys are his own
    _problem(app_client.post("/v1/audits", json=body, headers=bob), 422, "upload it to /v1/models first")
    _upload_and_submit(app_client, bob, trained_digits)
    assert len(app_client.get("/v1/audits", headers=alice).json()["items"]) == 1
    assert app_client.get(location, headers=alice).json()["state"] == "queued"  # nothing of bob's touched it


def test_a_key_acts_only_within_its_scopes(app_client: TestClient, trained_digits: TrainedDigits) -> None:
    reader = _token(app_client, "alice", Scope.read)
    _problem(
        app_client.post(
            "/v1/models", content=trained_digits.onnx_dynamo.read_bytes(), headers=OCTET | reader
        ),
        403,
        "'submit' scope",
    )
    assert app_client.get("/v1/audits", headers=reader).status_code == 200
    _problem(app_client.get("/v1/keys", headers=_token(app_client, "alice")), 403, "'admin' scope")


def test_an_admin_key_manages_its_tenants_keys_and_a_revoked_key_answers_401(app_client: TestClient) -> None:
    admin = _token(app_client, "alice", Scope.admin)
    created = app_client.post("/v1/keys", json={"name": "ci", "scopes": ["read"]}, headers=admin)
    assert created.status_code == 201
    key = created.json()
    assert key["tenant"] == "alice" and key["scopes"] == ["read"] and key["token"].startswith("sa_")
    ci = {"Authorization": f"Bearer {key['token']}"}
    assert app_client.get("/v1/audits", headers=ci).status_code == 200
    listed = app_client.get("/v1/keys", headers=admin).json()
    assert key["id"] in {k["id"] for k in listed} and all("token" not in k for k in listed)
    bob_admin = _token(app_client, "bob", Scope.admin)
    _problem(app_client.delete(f"/v1/keys/{key['id']}", headers=bob_admin), 404, "does not exist")
    assert app_client.delete(f"/v1/keys/{key['id']}", headers=admin).status_code == 204
    _problem(app_client.get("/v1/audits", headers=ci), 401, "unknown or revoked")


def test_keys_from_the_command_line_are_hashed_at_rest_and_revoked_for_the_running_service(
    tmp_path: Path, app_client: TestClient
) -> None:
    data_dir = str(app_client.app.state.runtime.settings.data_dir)
    env = {"SALIENCY_DATABASE_URL": app_client.app.state.runtime.settings.resolved_database_url}
    command = [str(VENV_BIN / "saliency-audit"), "keys"]
    created = subprocess.run(
        [*command, "create", "--data-dir", data_dir, "--tenant", "carol", "--scopes", "read"],
        capture_output=True,
        text=True,
        env=dict(os.environ) | env,
        check=True,
    )
    token = created.stdout.strip()
    key_id = token.split("_")[1]
    with closing(
        sqlite3.connect(tmp_path / "jobs.sqlite3")
    ) as database:  # not the file: SQLite holds its locks
        stored = repr(database.execute("SELECT * FROM api_keys").fetchall())
    assert key_id in stored and token.split("_", 2)[2] not in stored
    listing = subprocess.run(
        [*command, "list", "--data-dir", data_dir],
        capture_output=True,
        text=True,
        env=dict(os.environ) | env,
        check=True,
    ).stdout
    assert key_id in listing and "carol" in listing and token not in listing
    auth = {"Authorization": f"Bearer {token}"}
    assert app_client.get("/v1/audits", headers=auth).status_code == 200
    subprocess.run(
        [*command, "revoke", "--data-dir", data_dir, key_id], env=dict(os.environ) | env, check=True
    )
    deadline = time.monotonic() + 10  # the service trusts a verified key for a few seconds
    while app_client.get("/v1/audits", headers=auth).status_code != 401:
        assert time.monotonic() < deadline, "a revoked key still works"
        time.sleep(0.5)


def test_a_tenant_over_its_active_job_limit_gets_429_and_others_do_not(
    tmp_path: Path, redis_url: str, trained_digits: TrainedDigits
) -> None:
    unworked = redis_url.rsplit("/", 1)[0] + "/1"
    database = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    with make_client(tmp_path, database, unworked, auth="keys", max_active_jobs=1) as client:
        alice, bob = _token(client, "alice"), _token(client, "bob")
        body, location = _upload_and_submit(client, alice, trained_digits)
        response = client.post("/v1/audits", json=body | {"settings": {"seed": 1}}, headers=alice)
        _problem(response, 429, "1 queued or running audits")
        assert int(response.headers["retry-after"]) > 0
        _upload_and_submit(client, bob, trained_digits)  # another tenant has its own allowance
        client.post(f"{location}/cancel", headers=alice)
        assert (
            client.post("/v1/audits", json=body | {"settings": {"seed": 1}}, headers=alice).status_code == 202
        )


def test_a_tenant_over_its_stored_bytes_gets_413(
    tmp_path: Path, redis_url: str, trained_digits: TrainedDigits
) -> None:
    model = trained_digits.onnx_dynamo.read_bytes()
    limit = len(model) + 1000
    database = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    with make_client(tmp_path, database, redis_url, auth="keys", max_stored_bytes=limit) as client:
        alice, bob = _token(client, "alice"), _token(client, "bob")
        assert client.post("/v1/models", content=model, headers=OCTET | alice).status_code == 201
        probes = trained_digits.probes.read_bytes()
        _problem(client.post("/v1/probe-sets", content=probes, headers=OCTET | alice), 413, "stored bytes")
        assert client.post("/v1/probe-sets", content=probes, headers=OCTET | bob).status_code == 201
        assert list((client.app.state.runtime.storage.root / "uploads").iterdir()) == []


def test_json_bodies_are_capped_declared_or_streamed(app_client: TestClient) -> None:
    auth = _token(app_client, "alice")
    big = b'{"model": "' + b"0" * 70_000 + b'"}'
    headers = auth | {"Content-Type": "application/json"}
    _problem(app_client.post("/v1/audits", content=big, headers=headers), 413, "limited to 65536 bytes")
    streamed = app_client.post("/v1/audits", content=iter([big[:40_000], big[40_000:]]), headers=headers)
    _problem(streamed, 413, "limited to 65536 bytes")


def test_responses_carry_a_request_id_and_problem_types_are_documented(app_client: TestClient) -> None:
    given = app_client.get("/v1/audits", headers={"X-Request-ID": "pipeline-42"})
    assert given.headers["x-request-id"] == "pipeline-42"
    made_up = app_client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert len(made_up.headers["x-request-id"]) == 32
    problem_type = given.json()["type"]
    described = app_client.get(problem_type)
    assert described.status_code == 200 and described.json()["status"] == 401
    assert {kind["type"] for kind in app_client.get("/problems").json()} >= {
        problem_type,
        "/problems/not-found",
    }


def test_finished_audits_can_be_deleted_and_active_ones_cannot(
    app_client: TestClient, trained_digits: TrainedDigits
) -> None:
    alice = _token(app_client, "alice")
    _, location = _upload_and_submit(app_client, alice, trained_digits)
    _problem(app_client.delete(location, headers=alice), 409, "cancel it")
    app_client.post(f"{location}/cancel", headers=alice)
    assert app_client.delete(location, headers=alice).status_code == 204
    _problem(app_client.get(location, headers=alice), 404, "does not exist")


def test_local_access_without_a_key_is_refused_on_a_public_address(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            str(VENV_BIN / "saliency-audit"),
            "serve",
            "--host",
            "0.0.0.0",
            "--auth",
            "local",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "loopback" in result.stderr


def test_an_unexpected_error_answers_500_with_the_request_id_and_no_internals(
    app_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("/srv/secret/jobs.sqlite3 is corrupt")

    monkeypatch.setattr(app_client.app.state.runtime.store.jobs, "list_jobs", broken)
    response = app_client.get("/v1/audits", headers=_token(app_client, "alice") | {"X-Request-ID": "ci-7"})
    body = _problem(response, 500, "quote request id ci-7")
    assert body["type"] == "/problems/internal-error" and response.headers["x-request-id"] == "ci-7"
    assert "secret" not in response.text and "corrupt" not in response.text


def test_tokens_that_cannot_be_keys_are_refused_before_the_key_cache(app_client: TestClient) -> None:
    junk = {"Authorization": "Bearer " + "j" * 200_000}
    _problem(app_client.get("/v1/audits", headers=junk), 401, "unknown or revoked")
    assert app_client.app.state.runtime.key_cache._verified == {}


def test_a_training_set_resized_past_the_pixel_budget_is_refused_at_submit(
    tmp_path: Path, redis_url: str, trained_digits: TrainedDigits
) -> None:
    """60 labelled 16 x 16 images pass upload; resized to 128 x 128 RGB they would be 2.9 M values."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for index, (image, label) in enumerate(
            zip(trained_digits.data.x_train[:60], trained_digits.data.y_train, strict=False)
        ):
            png = io.BytesIO()
            Image.fromarray((image[0] * 255).astype(np.uint8)).save(png, format="PNG")
            bundle.writestr(f"{label}/{index:03d}.png", png.getvalue())
    database = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    with make_client(tmp_path, database, redis_url, max_probe_set_pixels=1_000_000) as client:
        uploads = {
            role: client.post(route, content=data, headers=OCTET)
            for role, route, data in (
                ("model", "/v1/models", trained_digits.onnx_dynamo.read_bytes()),
                ("probes", "/v1/probe-sets", buffer.getvalue()),
                ("training_data", "/v1/training-sets", buffer.getvalue()),
            )
        }
        assert {response.status_code for response in uploads.values()} == {201}, uploads
        body = {role: response.json()["sha256"] for role, response in uploads.items()}
        settings = {"tests": ["data"], "max_images": 2, "preprocessing": {"size": [128, 128], "channels": 3}}
        response = client.post("/v1/audits", json=body | {"settings": settings})
        _problem(response, 422, "training_data: 60 images resized to 128 x 128")
