"""The secret a tenant's completion callbacks are signed with, for its receivers to verify them."""

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from service.api.auth import Submitter
from service.api.routes import AUTHENTICATED, problem_responses
from service.api.runtime import RuntimeDep
from service.api.schemas import WebhookSecretOut

router = APIRouter(prefix="/v1/webhook-secret", tags=["webhooks"])


@router.get(
    "",
    response_model=WebhookSecretOut,
    responses=problem_responses(*AUTHENTICATED),
    summary="The tenant's webhook signing secret",
    description="Callbacks (`callback_url` of an audit) carry `webhook-id`, `webhook-timestamp` and "
    "`webhook-signature` headers as Standard Webhooks defines them; verify them with this secret and any "
    "Standard Webhooks library. The secret is made on first use and is the same for every key of the tenant.",
)
async def get_webhook_secret(runtime: RuntimeDep, caller: Submitter) -> WebhookSecretOut:
    return WebhookSecretOut(secret=await run_in_threadpool(runtime.keys.webhook_secret, caller.tenant))
