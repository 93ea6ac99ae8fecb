"""The report's JSON Schema is exported once, from the pydantic models, and must not drift."""

import json
from pathlib import Path

from workers.core.report import SCHEMA_VERSION, AuditReport

SCHEMA_FILE = Path(__file__).parent.parent / "openapi" / "report.schema.json"


def test_exported_schema_matches_the_models() -> None:
    exported = json.loads(SCHEMA_FILE.read_text())
    assert exported == AuditReport.model_json_schema(), (
        "openapi/report.schema.json is stale: regenerate it with "
        "'saliency-audit schema > openapi/report.schema.json' and bump SCHEMA_VERSION if readers would notice"
    )


def test_schema_names_its_version() -> None:
    assert AuditReport.model_json_schema()["properties"]["schema_version"]["const"] == SCHEMA_VERSION
