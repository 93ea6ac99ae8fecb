"""API keys: created with a tenant and scopes, shown once, kept as a hash, revoked for good.

A key reads ``sa_<id>_<secret>``: the id finds the row and is safe to show in lists and logs; only the
sha256 of the secret is stored, compared in constant time (docs/decisions/0013).
"""

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from workers.core.store.tables import ApiKeyRow, WebhookSecretRow

TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_TOKEN = re.compile(r"^sa_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


class Scope(StrEnum):
    read = "read"  # list and read audits, artifacts, reports and archives
    submit = "submit"  # upload, submit, cancel and delete audits
    admin = "admin"  # everything, and the tenant's keys


@dataclass(frozen=True)
class ApiKey:
    id: str
    tenant: str
    name: str
    scopes: frozenset[Scope]
    created_at: datetime
    revoked_at: datetime | None


def _key(row: ApiKeyRow) -> ApiKey:
    scopes = frozenset(Scope(name) for name in row.scopes.split(",") if name)
    return ApiKey(row.id, row.tenant, row.name, scopes, row.created_at, row.revoked_at)


def well_formed(token: str) -> bool:
    return _TOKEN.match(token) is not None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    def __init__(self, engine: Engine) -> None:
        self._session = sessionmaker(engine, expire_on_commit=False)

    def create(self, tenant: str, name: str, scopes: frozenset[Scope]) -> tuple[ApiKey, str]:
        """The new key and its token, which is shown this once and never stored."""
        if not re.match(TENANT_PATTERN, tenant):
            raise ValueError(f"tenant {tenant!r}: use 1-64 lower-case letters, digits, '-' or '_'")
        if not scopes:
            raise ValueError("name at least one scope: read, submit or admin")
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        row = ApiKeyRow(
            id=key_id,
            tenant=tenant,
            name=name[:100],
            scopes=",".join(sorted(scopes)),
            secret_sha256=_digest(secret),
            created_at=datetime.now(UTC),
        )
        with self._session.begin() as session:
            session.add(row)
        return _key(row), f"sa_{key_id}_{secret}"

    def list(self, tenant: str | None = None) -> list[ApiKey]:
        query = select(ApiKeyRow).order_by(ApiKeyRow.created_at)
        if tenant is not None:
            query = query.where(ApiKeyRow.tenant == tenant)
        with self._session() as session:
            return [_key(row) for row in session.scalars(query)]

    def revoke(self, key_id: str, tenant: str | None = None) -> ApiKey | None:
        """Revoke the key (of ``tenant``, when given); ``None`` when there is no such key."""
        condition = [ApiKeyRow.id == key_id] + ([ApiKeyRow.tenant == tenant] if tenant is not None else [])
        with self._session.begin() as session:
            session.execute(
                update(ApiKeyRow)
                .where(*condition, ApiKeyRow.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
            row = session.scalar(select(ApiKeyRow).where(*condition))
            return None if row is None else _key(row)

    def webhook_secret(self, tenant: str) -> str:
        """The tenant's callback signing secret, made on first use."""
        with self._session() as session:
            row = session.get(WebhookSecretRow, tenant)
            if row is not None:
                return row.secret
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        try:
            with self._session.begin() as session:
                session.add(WebhookSecretRow(tenant=tenant, secret=secret, created_at=datetime.now(UTC)))
        except IntegrityError:  # made by another request at the same moment: that one stands
            return self.webhook_secret(tenant)
        return secret

    def verify(self, token: str) -> ApiKey | None:
        """The live key the token belongs to, or ``None`` (malformed, unknown, wrong secret or revoked)."""
        match = _TOKEN.match(token)
        if match is None:
            return None
        key_id, secret = match.groups()
        with self._session() as session:
            row = session.get(ApiKeyRow, key_id)
            if row is None or row.revoked_at is not None:
                return None
            if not hmac.compare_digest(row.secret_sha256, _digest(secret)):
                return None
            return _key(row)
