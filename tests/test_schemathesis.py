"""schemathesis against the live API (`saliency-audit serve`, API keys required): thousands of generated
requests, valid and not, must meet no server error, and every answer must conform to the OpenAPI document
(status codes, content types, headers and bodies)."""

import re
import subprocess
from pathlib import Path

from tests.services import VENV_BIN, api_server, create_api_key

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_headers_conformance,response_schema_conformance"
)


def test_generated_requests_meet_no_server_error_and_conform_to_the_schema(tmp_path: Path) -> None:
    env = {"SALIENCY_DATA_DIR": str(tmp_path / "data"), "SALIENCY_AUTH": "keys"}
    token = create_api_key(env, "fuzz", "read,submit")  # not admin: the fuzzer would revoke its own key
    with api_server(env, tmp_path / "api.log", cwd=tmp_path) as (url, _):
        result = subprocess.run(
            [
                str(VENV_BIN / "st"),
                "run",
                f"{url}/openapi.json",
                "--header",
                f"Authorization: Bearer {token}",
                "--checks",
                CHECKS,
                "--phases",
                "examples,coverage,fuzzing",
                "--max-examples",
                "40",
                "--seed",
                "20261202",
                "--workers",
                "1",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=tmp_path,
        )
    summary = result.stdout[-3000:]
    assert result.returncode == 0, summary
    counts = re.search(r"(\d+) generated, (\d+) passed", summary)
    assert counts is not None and int(counts[1]) == int(counts[2]) > 500, summary
    print(f"schemathesis: {counts[1]} generated requests, {counts[2]} passed")
