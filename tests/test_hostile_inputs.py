"""The hostile-input corpus, against a live embedded service (`saliency-audit serve`) as a stranger would
meet it: every case gets a 4xx problem+json that says what is wrong, or its job fails cleanly with a
reason; none answers 500, none shows a server path or a traceback, and the service and its worker live on.

The upload cases come from ``tests.test_hostile_uploads.UPLOAD_CASES``; request, setting, identity and
job cases are here. The test prints the corpus table (cases by kind and answer).
"""

import io
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import TrainedDigits
from tests.services import api_server
from tests.test_hostile_uploads import PIXEL_BUDGET, UPLOAD_CASES, UPLOAD_LIMIT
from workers.core.store.database import make_engine
from workers.core.store.keys import KeyStore, Scope

OCTET = {"Content-Type": "application/octet-stream"}
JSON = {"Content-Type": "application/json"}
LEAKS = ("/tmp", "/work", "/root", "/home", "site-packages", "Traceback", 'File "')


@dataclass
class Live:
    client: httpx.Client
    data_dir: Path
    inputs: dict[str, str] = field(default_factory=dict)  # sha256 of a good model and probes

    def upload(self, route: str, data: bytes) -> str:
        response = self.client.post(route, content=data, headers=OCTET)
        assert response.status_code in (200, 201), response.text
        return response.json()["sha256"]

    def submit(self, **changes: Any) -> httpx.Response:
        return self.client.post("/v1/audits", json=self.inputs | changes)


@dataclass(frozen=True)
class Case:
    kind: str
    name: str
    send: Callable[[Live], httpx.Response]
    status: int
    detail: str


@dataclass(frozen=True)
class JobCase:
    """A job that is accepted (its inputs pass the cheap checks) and must then fail with a reason."""

    kind: str
    name: str
    model: Callable[[TrainedDigits], bytes]
    probes: Callable[[TrainedDigits], bytes]
    settings: dict[str, Any]
    detail: str


def _key(live: Live, scopes: frozenset[Scope], revoked: bool = False) -> dict[str, str]:
    keys = KeyStore(make_engine(f"sqlite:///{live.data_dir / 'jobs.sqlite3'}"))
    key, token = keys.create("local", "corpus", scopes)
    if revoked:
        keys.revoke(key.id)
    return {"Authorization": f"Bearer {token}"}


def _settings(**values: Any) -> Callable[[Live], httpx.Response]:
    return lambda live: live.submit(settings=values)


REQUEST_CASES = [
    # identity
    Case(
        "identity",
        "malformed bearer token",
        lambda live: live.client.get("/v1/audits", headers={"Authorization": "Bearer not-a-key"}),
        401,
        "unknown or revoked",
    ),
    Case(
        "identity",
        "basic credentials",
        lambda live: live.client.get("/v1/audits", headers={"Authorization": "Basic dXNlcjpwYXNz"}),
        401,
        "Bearer <API key>",
    ),
    Case(
        "identity",
        "revoked key",
        lambda live: live.client.get("/v1/audits", headers=_key(live, frozenset({Scope.read}), revoked=True)),
        401,
        "unknown or revoked",
    ),
    Case(
        "identity",
        "read-only key submits",
        lambda live: live.client.post(
            "/v1/audits", json=live.inputs, headers=_key(live, frozenset({Scope.read}))
        ),
        403,
        "'submit' scope",
    ),
    Case(
        "identity",
        "submit key lists keys",
        lambda live: live.client.get("/v1/keys", headers=_key(live, frozenset({Scope.submit}))),
        403,
        "'admin' scope",
    ),
    Case(
        "identity",
        "unknown audit id",
        lambda live: live.client.get("/v1/audits/" + "0" * 32),
        404,
        "does not exist",
    ),
    Case(
        "identity",
        "path traversal as an id",
        lambda live: live.client.get("/v1/audits/..%2F..%2Fetc"),
        404,
        "no such resource",
    ),
    Case(
        "identity",
        "forged cursor",
        lambda live: live.client.get("/v1/audits", params={"cursor": "c2VxOi0x"}),
        400,
        "not one this API returned",
    ),
    # settings
    Case("settings", "negative seed", _settings(seed=-5), 422, "settings.seed"),
    Case(
        "settings",
        "infinite conversion tolerance",
        lambda live: live.client.post(
            "/v1/audits",
            content=json.dumps(live.inputs | {"settings": {"conversion_atol": float("inf")}}),
            headers=JSON,
        ),
        422,
        "settings.conversion_atol",
    ),
    Case(
        "settings",
        "NaN noise level",
        lambda live: live.client.post(
            "/v1/audits",
            content=json.dumps(live.inputs | {"settings": {"noise_level": float("nan")}}),
            headers=JSON,
        ),
        422,
        "settings.noise_level",
    ),
    Case("settings", "batch size 10^12", _settings(batch_size=10**12), 422, "settings.batch_size"),
    Case("settings", "device 'quantum'", _settings(device="quantum"), 422, "settings.device"),
    Case(
        "settings",
        "resize to -1 x -1",
        _settings(preprocessing={"size": [-1, -1]}),
        422,
        "settings.preprocessing.size",
    ),
    Case(
        "settings",
        "resize to 100000 x 100000",
        _settings(preprocessing={"size": [100_000, 100_000]}),
        422,
        "settings.preprocessing.size",
    ),
    Case(
        "settings",
        "resize an array",
        _settings(preprocessing={"size": [32, 32]}),
        422,
        "arrays are never resized",
    ),
    Case(
        "settings",
        "mean of 1000 values",
        _settings(preprocessing={"mean": [0.5] * 1000}),
        422,
        "settings.preprocessing.mean",
    ),
    Case("settings", "10^9 IG steps", _settings(ig_steps=10**9), 422, "settings.ig_steps"),
    Case("settings", "10^6 draws", _settings(draws=10**6), 422, "settings.draws"),
    Case(
        "settings",
        "1 TB memory budget",
        _settings(memory_budget_mib=10**9),
        422,
        "settings.memory_budget_mib",
    ),
    Case("settings", "unknown method", _settings(methods=["lime"]), 422, "unknown saliency method"),
    Case("settings", "unknown field", _settings(evil=True), 422, "settings.evil"),
    Case("settings", "max_images above the service's", _settings(max_images=10_000), 422, "at most 1000"),
    Case(
        "settings",
        "100 twins",
        lambda live: live.submit(settings={"tests": ["data"]}, twins=[f"{k:064x}" for k in range(100)]),
        422,
        "twins",
    ),
    # bodies and content types
    Case(
        "request",
        "audit body of 1 MB",
        lambda live: live.client.post(
            "/v1/audits", content=b'{"model": "' + b"0" * 1_000_000 + b'"}', headers=JSON
        ),
        413,
        "limited to",
    ),
    Case(
        "request",
        "audit body streamed past the cap",
        lambda live: live.client.post(
            "/v1/audits", content=iter([b'{"model": "', b"0" * 100_000, b'"}']), headers=JSON
        ),
        413,
        "limited to",
    ),
    Case(
        "request",
        "audit as a form",
        lambda live: live.client.post("/v1/audits", data={"model": "x"}),
        415,
        "as JSON",
    ),
    Case(
        "request",
        "audit as text",
        lambda live: live.client.post(
            "/v1/audits", content=json.dumps(live.inputs), headers={"Content-Type": "text/plain"}
        ),
        415,
        "as JSON",
    ),
    Case(
        "request",
        "not JSON",
        lambda live: live.client.post("/v1/audits", content=b"\xff\xfe{", headers=JSON),
        400,
        "error parsing the body",
    ),
    Case(
        "request",
        "model as a multipart form",
        lambda live: live.client.post("/v1/models", files={"file": ("m.onnx", b"\x08\x07")}),
        415,
        "--data-binary",
    ),
    Case(
        "request",
        "model as JSON",
        lambda live: live.client.post("/v1/models", content=b"{}", headers=JSON),
        415,
        "application/octet-stream",
    ),
    Case(
        "request",
        "empty Idempotency-Key",
        lambda live: live.client.post("/v1/audits", json=live.inputs, headers={"Idempotency-Key": ""}),
        422,
        "idempotency-key",
    ),
    Case(
        "request",
        "Idempotency-Key of 10 KB",
        lambda live: live.client.post(
            "/v1/audits", json=live.inputs, headers={"Idempotency-Key": "k" * 10_000}
        ),
        422,
        "idempotency-key",
    ),
    Case(
        "request",
        "a query of 300 filename characters",
        lambda live: live.client.post(
            "/v1/models", params={"filename": "x" * 300}, content=b"\x08\x07", headers=OCTET
        ),
        422,
        "filename",
    ),
]


# --- models that pass upload and fail when the worker runs them ------------------------------------------


def _onnx(
    nodes: list[onnx.NodeProto], initializers: list[np.ndarray] | None = None, classes: int = 10
) -> bytes:
    graph = helper.make_graph(
        nodes,
        "hostile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(array, f"w{k}") for k, array in enumerate(initializers or [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def model_without_parameters(_: TrainedDigits) -> bytes:
    starts, ends = np.array([0], np.int64), np.array([10], np.int64)
    axes = np.array([1], np.int64)
    return _onnx(
        [
            helper.make_node("Flatten", ["x"], ["f"]),
            helper.make_node("Slice", ["f", "w0", "w1", "w2"], ["y"]),
        ],
        [starts, ends, axes],
    )


def model_producing_nan(_: TrainedDigits) -> bytes:
    weights = np.random.default_rng(0).normal(size=(256, 10)).astype(np.float32)
    minus = np.array(-1e6, np.float32)
    return _onnx(
        [
            helper.make_node("Flatten", ["x"], ["f"]),
            helper.make_node("MatMul", ["f", "w0"], ["logits"]),
            helper.make_node("Add", ["logits", "w1"], ["negative"]),
            helper.make_node("Log", ["negative"], ["y"]),
        ],
        [weights, minus],
    )


def model_with_unsupported_op(_: TrainedDigits) -> bytes:
    weights = np.random.default_rng(0).normal(size=(256, 10)).astype(np.float32)
    return _onnx(
        [
            helper.make_node("Flatten", ["x"], ["f"]),
            helper.make_node("MatMul", ["f", "w0"], ["logits"]),
            helper.make_node("CumSum", ["logits", "w1"], ["y"]),
        ],
        [weights, np.array(1, np.int64)],
    )


def digits_model(digits: TrainedDigits) -> bytes:
    return digits.onnx_dynamo.read_bytes()


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def digits_probes(digits: TrainedDigits) -> bytes:
    return _npz(x=digits.data.x_test[:8], y=digits.data.y_test[:8])


JOB_CASES = [
    JobCase(
        "job",
        "model without parameterized layers",
        model_without_parameters,
        digits_probes,
        {},
        "no layers with parameters",
    ),
    JobCase("job", "model producing NaN", model_producing_nan, digits_probes, {}, "NaN"),
    JobCase("job", "unsupported ONNX op", model_with_unsupported_op, digits_probes, {}, "CumSum"),
    JobCase(
        "job",
        "probes of the wrong shape",
        digits_model,
        lambda d: _npz(x=np.zeros((8, 3, 32, 32), np.float32)),
        {},
        "expects input of shape",
    ),
    JobCase(
        "job",
        "probes holding NaN",
        digits_model,
        lambda d: _npz(x=np.full((8, 1, 16, 16), np.nan, np.float32)),
        {},
        "NaN",
    ),
    JobCase(
        "job",
        "labels beyond the model's classes",
        digits_model,
        lambda d: _npz(x=d.data.x_test[:8], y=np.full(8, 99)),
        {"target": "label"},
        "classes",
    ),
]


# --- the run ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, trained_digits: TrainedDigits) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("corpus")
    env = {
        "SALIENCY_DATA_DIR": str(folder / "data"),
        "SALIENCY_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
        "SALIENCY_MAX_PROBE_SET_PIXELS": str(PIXEL_BUDGET),
        "SALIENCY_MAX_ACTIVE_JOBS": "100",
    }
    with (
        api_server(env, folder / "api.log", cwd=folder) as (url, process),
        httpx.Client(base_url=url, timeout=120) as client,
    ):
        session = Live(client, folder / "data")
        session.inputs = {
            "model": session.upload("/v1/models", digits_model(trained_digits)),
            "probes": session.upload("/v1/probe-sets", digits_probes(trained_digits)),
        }
        yield session
        assert process.poll() is None, "the API process died"


def _leaks(text: str, live: Live) -> list[str]:
    return [leak for leak in (str(live.data_dir), *LEAKS) if leak in text]


def test_the_hostile_corpus_gets_clean_answers_and_the_service_lives_on(
    live: Live, trained_digits: TrainedDigits
) -> None:
    answers: Counter[tuple[str, str]] = Counter()
    wrong: list[str] = []

    def check(kind: str, name: str, response: httpx.Response, status: int, detail: str) -> None:
        body = response.text
        problems = []
        if response.status_code != status:
            problems.append(f"status {response.status_code}, expected {status}")
        if response.headers.get("content-type") != "application/problem+json":
            problems.append(f"content type {response.headers.get('content-type')}")
        elif detail.lower() not in response.json().get("detail", "").lower():
            problems.append(f"detail lacks {detail!r}")
        if leaks := _leaks(body, live):
            problems.append(f"leaks {leaks}")
        answers[(kind, str(response.status_code))] += 1
        if problems:
            wrong.append(f"{kind} / {name}: {'; '.join(problems)}: {body[:300]}")

    for case in UPLOAD_CASES:
        response = live.client.post(case.route, content=case.body(), headers=OCTET)
        check(case.kind, case.name, response, case.status, case.detail)
    for case in REQUEST_CASES:
        check(case.kind, case.name, case.send(live), case.status, case.detail)

    submitted = []
    for job_case in JOB_CASES:
        inputs = {
            "model": live.upload("/v1/models", job_case.model(trained_digits)),
            "probes": live.upload("/v1/probe-sets", job_case.probes(trained_digits)),
        }
        settings = {"methods": ["gradient"], "tests": ["cascading"], "draws": 1, "max_draws": 1}
        response = live.client.post("/v1/audits", json=inputs | {"settings": settings | job_case.settings})
        if response.status_code != 202:
            wrong.append(f"job / {job_case.name}: not accepted: {response.text[:300]}")
            continue
        submitted.append((job_case, response.headers["location"]))
    for job_case, location in submitted:
        job = _finished(live.client, location)
        error = job.get("error") or {}
        answers[("job", f"failed {error.get('status')}")] += 1
        if job["state"] != "failed" or error.get("type") != "/problems/audit-refused":
            wrong.append(f"job / {job_case.name}: {job['state']}, error {error}")
        elif job_case.detail.lower() not in error["detail"].lower() or _leaks(json.dumps(error), live):
            wrong.append(f"job / {job_case.name}: unclear or leaking reason: {error['detail'][:300]}")

    assert live.client.get("/healthz").status_code == 200
    assert live.client.get("/readyz").json()["status"] == "ok", "the embedded worker died"
    total = len(UPLOAD_CASES) + len(REQUEST_CASES) + len(JOB_CASES)
    table = "\n".join(
        f"  {kind:12} {answer:12} {count:3}" for (kind, answer), count in sorted(answers.items())
    )
    print(f"\nhostile corpus: {total} cases\n{table}")
    assert total >= 60
    assert not wrong, "\n".join(wrong)


def _finished(client: httpx.Client, location: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(location).json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.3)
    raise AssertionError(f"{location} did not finish: {job}")
