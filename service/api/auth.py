"""Who is calling: an API key's tenant and scopes, or the local tenant where the service allows it.

Every route that touches jobs or artifacts depends on one of ``Reader``, ``Submitter`` or ``Admin``; the
tenant they carry scopes every store query, so another tenant's ids are simply not found.
"""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.api.problems import Problem
from service.api.runtime import RuntimeDep
from workers.core import problems
from workers.core.config import LOCAL_TENANT, AuthMode
from workers.core.store.keys import Scope

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="saliency-audit"'}

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key, `Authorization: Bearer sa_<id>_<secret>` (`saliency-audit keys create`).",
)


@dataclass(frozen=True)
class Caller:
    tenant: str
    key_id: str | None  # None: the local tenant, without a key
    scopes: frozenset[Scope]

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes or Scope.admin in self.scopes


LOCAL_CALLER = Caller(LOCAL_TENANT, None, frozenset(Scope))


async def _caller(
    request: Request,
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    if credentials is None:
        if request.headers.get("authorization"):
            raise Problem(
                problems.UNAUTHORIZED, "the Authorization header must read 'Bearer <API key>'", _CHALLENGE
            )
        if runtime.settings.auth is AuthMode.local:
            return LOCAL_CALLER
        raise Problem(problems.UNAUTHORIZED, "send an API key as 'Authorization: Bearer sa_...'", _CHALLENGE)
    key = await runtime.key_cache.verify(credentials.credentials)
    if key is None:
        raise Problem(problems.UNAUTHORIZED, "the API key is unknown or revoked", _CHALLENGE)
    return Caller(key.tenant, key.id, key.scopes)


def _requiring(scope: Scope):  # type: ignore[no-untyped-def]
    async def check(caller: Annotated[Caller, Depends(_caller)]) -> Caller:
        if not caller.allows(scope):
            raise Problem(problems.FORBIDDEN, f"this operation needs an API key with the '{scope}' scope")
        return caller

    return check


Reader = Annotated[Caller, Depends(_requiring(Scope.read))]
Submitter = Annotated[Caller, Depends(_requiring(Scope.submit))]
Admin = Annotated[Caller, Depends(_requiring(Scope.admin))]
