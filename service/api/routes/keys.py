"""The tenant's API keys, for a key with the admin scope (``saliency-audit keys`` does the same from a
shell on the server, for any tenant)."""

from typing import Annotated

from fastapi import APIRouter, Path, Response
from starlette.concurrency import run_in_threadpool

from service.api.auth import Admin
from service.api.problems import not_found
from service.api.routes import AUTHENTICATED, problem_responses
from service.api.runtime import RuntimeDep
from service.api.schemas import CreatedKeyOut, KeyIn, KeyOut
from workers.core import problems

router = APIRouter(prefix="/v1/keys", tags=["keys"])
_ADMIN_PROBLEMS = problem_responses(*AUTHENTICATED)
KeyId = Annotated[str, Path(max_length=64, description="The key's id (the part after 'sa_')")]


@router.get("", response_model=list[KeyOut], responses=_ADMIN_PROBLEMS, summary="List the tenant's keys")
async def list_keys(runtime: RuntimeDep, caller: Admin) -> list[KeyOut]:
    keys = await run_in_threadpool(runtime.keys.list, caller.tenant)
    return [KeyOut.of(key) for key in keys]


@router.post(
    "",
    status_code=201,
    response_model=CreatedKeyOut,
    responses=problem_responses(*AUTHENTICATED, problems.MALFORMED_BODY),
    summary="Create a key for the tenant",
    description="The answer holds the key itself (`token`), once; only its hash is stored.",
)
async def create_key(body: KeyIn, runtime: RuntimeDep, caller: Admin) -> CreatedKeyOut:
    key, token = await run_in_threadpool(
        runtime.keys.create, caller.tenant, body.name, frozenset(body.scopes)
    )
    return CreatedKeyOut(**KeyOut.of(key).model_dump(), token=token)


@router.delete(
    "/{key_id}",
    status_code=204,
    response_class=Response,
    responses=problem_responses(*AUTHENTICATED, problems.NOT_FOUND),
    summary="Revoke one of the tenant's keys",
)
async def revoke_key(key_id: KeyId, runtime: RuntimeDep, caller: Admin) -> Response:
    key = await run_in_threadpool(runtime.keys.revoke, key_id, caller.tenant)
    if key is None:
        raise not_found(f"key {key_id}")
    runtime.key_cache.forget()
    return Response(status_code=204)
