"""Uploaded artifacts: recorded once per tenant, bytes and kind; forgotten once no job names them."""

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from workers.core.store.states import JobTable, utc_now
from workers.core.store.tables import ArtifactRow, JobRow


@dataclass(frozen=True)
class Artifact:
    tenant: str
    sha256: str
    kind: str
    format: str
    size_bytes: int
    details: dict[str, Any]
    created_at: datetime


def _artifact(row: ArtifactRow) -> Artifact:
    return Artifact(
        row.tenant, row.sha256, row.kind, row.format, row.size_bytes, json.loads(row.details), row.created_at
    )


class ArtifactStore(JobTable):
    """The API's uploads and the sweeper's removal of those no job names."""

    def add_artifact(
        self, tenant: str, sha256: str, kind: str, format: str, size_bytes: int, details: dict[str, Any]
    ) -> tuple[Artifact, bool]:
        """Record a tenant's artifact; ``False`` when the tenant recorded these bytes as this kind before."""
        existing = self.get_artifact(tenant, sha256, kind)
        if existing is not None:
            return existing, False
        row = ArtifactRow(
            tenant=tenant,
            sha256=sha256,
            kind=kind,
            format=format,
            size_bytes=size_bytes,
            details=json.dumps(details),
            created_at=utc_now(),
        )
        try:
            with self._session.begin() as session:
                session.add(row)
        except IntegrityError:  # the same file, uploaded concurrently
            raced = self.get_artifact(tenant, sha256, kind)
            assert raced is not None
            return raced, False
        return _artifact(row), True

    def get_artifact(self, tenant: str, sha256: str, kind: str) -> Artifact | None:
        with self._session() as session:
            row = session.get(ArtifactRow, (tenant, sha256, kind))
            return None if row is None else _artifact(row)

    def stored_bytes(self, tenant: str) -> int:
        """What the tenant keeps: its uploads (each counted once per kind) and its audits' results."""
        uploads = select(func.coalesce(func.sum(ArtifactRow.size_bytes), 0)).where(
            ArtifactRow.tenant == tenant
        )
        results = select(
            func.coalesce(
                func.sum(func.coalesce(JobRow.report_size, 0) + func.coalesce(JobRow.archive_size, 0)), 0
            )
        ).where(JobRow.tenant == tenant)
        with self._session() as session:
            return int(session.scalar(uploads) or 0) + int(session.scalar(results) or 0)

    def delete_unused_artifacts(self, created_before: datetime) -> list[str]:
        """Forget artifacts recorded before ``created_before`` that no remaining job of their tenant names;
        the sha256 of each blob no artifact row refers to any more (the caller deletes those files)."""
        with self._session() as session:
            old = list(session.scalars(select(ArtifactRow).where(ArtifactRow.created_at < created_before)))
            if not old:  # the common case, each sweep: no job needs reading
                return []
            requests = list(session.execute(select(JobRow.tenant, JobRow.request)))
        named = {
            (tenant, sha) for tenant, request in requests for sha in _named_artifacts(json.loads(request))
        }
        unused = [row for row in old if (row.tenant, row.sha256) not in named]
        with self._session.begin() as session:
            for row in unused:
                session.execute(
                    delete(ArtifactRow).where(
                        ArtifactRow.tenant == row.tenant,
                        ArtifactRow.sha256 == row.sha256,
                        ArtifactRow.kind == row.kind,
                    )
                )
            candidates = {row.sha256 for row in unused}
            still_used = set(
                session.scalars(select(ArtifactRow.sha256).where(ArtifactRow.sha256.in_(candidates)))
            )
        return sorted(candidates - still_used)


def _named_artifacts(request: dict[str, Any]) -> set[str]:
    """The sha256 of every artifact a stored request names (see ``workers.core.requests.AuditRequest``)."""
    named = {request.get("model"), request.get("probes"), request.get("training_data")}
    named |= set(request.get("twins") or []) | set(request.get("controls") or [])
    named |= {request.get("twin"), request.get("control")}  # requests stored before lists were accepted
    return {sha for sha in named if isinstance(sha, str)}
