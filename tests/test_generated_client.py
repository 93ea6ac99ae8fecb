"""A Python client generated from openapi/openapi.json (openapi-python-client, with the settings of
openapi/openapi-python-client.yaml) runs an audit on the live embedded service with an API key. Every call
must come back typed: the report as the generated model of the report's schema, the archive as bytes, the
HTML report as text, a poll with the last ETag as the declared 304, a problem as ProblemDetail; so a
document that loses a response's schema or media type fails here (docs/decisions/0021)."""

import hashlib
import importlib
import io
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.conftest import TrainedDigits
from tests.e2e import FAST_SETTINGS
from tests.services import VENV_BIN, api_server, create_api_key
from tests.test_api import png_zip
from workers.core.report import SCHEMA_VERSION

OPENAPI = Path(__file__).parents[1] / "openapi"
PACKAGE = "saliency_audit_generated_client"
SETTINGS = FAST_SETTINGS | {"draws": 1, "max_draws": 1}  # one draw: a few seconds


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The client package, generated offline from the committed document and imported."""
    folder = tmp_path_factory.mktemp("generated")
    result = subprocess.run(
        [
            str(VENV_BIN / "openapi-python-client"),
            "generate",
            "--path",
            str(OPENAPI / "openapi.json"),
            "--config",
            str(OPENAPI / "openapi-python-client.yaml"),
            "--meta",
            "none",
            "--output-path",
            str(folder / PACKAGE),
            "--fail-on-warning",  # an operation or a response the generator cannot read
        ],
        env=os.environ | {"PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"},  # its ruff hooks
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(folder))
        for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
            del sys.modules[name]


def _operation(tag: str, operation_id: str) -> Any:
    """The generated module of one operation: ``sync`` returns the parsed answer, ``sync_detailed`` the
    answer with its status and headers."""
    return importlib.import_module(f"{PACKAGE}.api.{tag}.{operation_id}")


def test_a_generated_client_audits_and_reads_every_result_typed(
    generated: ModuleType, trained_digits: TrainedDigits, tmp_path: Path
) -> None:
    models, types = (importlib.import_module(f"{PACKAGE}.{name}") for name in ("models", "types"))
    env = {"SALIENCY_DATA_DIR": str(tmp_path / "data"), "SALIENCY_AUTH": "keys"}
    token = create_api_key(env, "generated")
    with (
        api_server(env, tmp_path / "api.log") as (url, _),
        generated.AuthenticatedClient(
            base_url=url, token=token, raise_on_unexpected_status=True, timeout=httpx.Timeout(30)
        ) as client,
    ):
        model = _operation("artifacts", "upload_model").sync(
            client=client,
            body=types.File(payload=io.BytesIO(trained_digits.onnx_legacy.read_bytes())),
            filename="digits.onnx",
        )
        probes = _operation("artifacts", "upload_probe_set").sync(
            client=client, body=types.File(payload=io.BytesIO(png_zip(trained_digits.data.x_test[:12])))
        )
        assert isinstance(model, models.ArtifactOut) and model.kind is models.ArtifactKind.MODEL
        assert isinstance(probes, models.ArtifactOut) and probes.kind is models.ArtifactKind.PROBES

        request = models.AuditRequest.from_dict(
            {"model": model.sha256, "probes": probes.sha256, "settings": SETTINGS}
        )
        submitted = _operation("audits", "submit_audit").sync_detailed(
            client=client, body=request, idempotency_key="generated-client"
        )
        assert submitted.status_code == 202 and isinstance(submitted.parsed, models.JobOut)
        job, etag = submitted.parsed, submitted.headers["etag"]
        assert submitted.headers["location"] == job.links.self_
        assert job.links.report_html == f"{job.links.self_}/report.html"
        assert job.request.settings.methods == [models.MethodName.GRADIENT, models.MethodName.GRADCAM]

        poll = _operation("audits", "get_audit")
        deadline = time.monotonic() + 240
        finished = (models.JobState.SUCCEEDED, models.JobState.FAILED, models.JobState.CANCELLED)
        while job.state not in finished and time.monotonic() < deadline:
            time.sleep(0.2)
            polled = poll.sync_detailed(job.id, client=client)
            assert isinstance(polled.parsed, models.JobOut)
            job, etag = polled.parsed, polled.headers["etag"]
        assert job.state is models.JobState.SUCCEEDED, job.error
        unchanged = poll.sync_detailed(job.id, client=client, if_none_match=etag)
        assert unchanged.status_code == 304 and unchanged.headers["etag"] == etag

        report = _operation("audits", "get_report").sync(job.id, client=client)
        assert isinstance(report, models.AuditReport), "the report's 200 response lost its schema"
        assert report.schema_version == SCHEMA_VERSION and report.probes.count == 12
        assert [method.name for method in report.methods] == SETTINGS["methods"]
        verdicts = [(m.name, t) for m in report.methods for t in m.tests if t.verdict is not None]
        assert len(verdicts) == 2
        for _, test in verdicts:
            assert isinstance(test.verdict, models.Verdict) and test.verdict.reason
            assert isinstance(test.verdict.outcome, models.Outcome)
            assert isinstance(test.verdict.estimate, models.Summary) and test.verdict.estimate.n > 0

        archive = _operation("audits", "get_archive").sync(job.id, client=client)
        assert isinstance(archive, types.File), "the archive's 200 response is not bytes"
        content = archive.payload.read()
        assert hashlib.sha256(content).hexdigest() == job.result.archive_sha256
        with zipfile.ZipFile(io.BytesIO(content)) as bundle:
            assert {"manifest.json", "report.json"} <= set(bundle.namelist())

        html = _operation("audits", "get_report_html").sync(job.id, client=client)
        assert isinstance(html, str), "the HTML report's 200 response is not text"
        for name, test in verdicts:  # the page marks each verdict with its method and outcome
            assert f'data-method="{name}"' in html and f'data-outcome="{test.verdict.outcome.value}"' in html

        missing = _operation("audits", "get_report").sync("0" * 32, client=client)
        assert isinstance(missing, models.ProblemDetail) and missing.type_ == "/problems/not-found"
