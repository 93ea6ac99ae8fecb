"""Completion callbacks, sent the Standard Webhooks way (``standardwebhooks``: ``webhook-id``,
``webhook-timestamp``, ``webhook-signature``), so a receiver verifies them with any Standard Webhooks
library and its tenant's secret (``GET /v1/webhook-secret``).

A thread of each API process sends the callbacks of jobs that ended. A delivery is claimed in the job
store before it is sent (one conditional update), so several API processes send each once; a receiver
that fails or cannot be reached is tried again with a doubling pause, up to ``webhook_attempts`` times.
The ``webhook-id`` is the same on every try: receivers drop repeats by it.
"""

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from importlib.metadata import version

import httpx
from standardwebhooks import Webhook

from service.api.callback_urls import AllowList, refusal
from service.api.schemas import JobOut
from workers.core import logs
from workers.core.config import Settings
from workers.core.periodic import Periodic
from workers.core.store.jobs import JobStore
from workers.core.store.keys import KeyStore
from workers.core.store.states import CallbackState, Job

log = logging.getLogger(__name__)

POLL_S = 1.0
TIMEOUT_S = 10.0  # connecting, and each read or write
DEADLINE_S = 15.0  # a whole try
HOLD_S = 60.0  # a claimed delivery whose sender stopped is tried again after this
MAX_PAUSE_S = 3600.0


def event(job: Job, sent_at: datetime) -> str:
    """The body: the event's type and the job as ``GET /v1/audits/{id}`` shows it."""
    body = {
        "type": f"audit.{job.state.value}",
        "timestamp": sent_at.isoformat(),
        "data": JobOut.of(job).model_dump(mode="json"),
    }
    return json.dumps(body, separators=(",", ":"))


class WebhookSender:
    def __init__(self, store: JobStore, keys: KeyStore, settings: Settings) -> None:
        self.store, self.keys, self.settings = store, keys, settings
        self.allowed = AllowList(settings.webhook_allowed_hosts)
        self._http = httpx.Client(
            timeout=TIMEOUT_S,
            follow_redirects=False,  # a redirect could lead past the address check
            headers={"User-Agent": f"saliency-audit/{version('saliency-audit')}"},
        )
        # each POST on a thread of its own, so a receiver that answers byte by byte costs DEADLINE_S at most
        self._posts = ThreadPoolExecutor(max_workers=4, thread_name_prefix="webhook-post")
        self._rounds = Periodic("webhook-sender", POLL_S, self.send_due, stop_wait_s=DEADLINE_S + 5)

    def start(self) -> None:
        self._rounds.start()

    def stop(self) -> None:
        self._rounds.stop()
        self._posts.shutdown(wait=False, cancel_futures=True)
        self._http.close()

    def send_due(self) -> int:
        """Send every callback that is due; how many were delivered. A tenant whose receiver failed waits
        for the next round, so it cannot hold up the others' callbacks."""
        delivered, failing = 0, set()
        for job in self.store.callbacks.due_callbacks(limit=50):
            assert job.callback is not None
            if job.tenant in failing or not self.store.callbacks.claim_callback(
                job.id, job.callback.attempts, HOLD_S
            ):
                continue
            with logs.bound_job(job.id):
                if self._send(job, job.callback.attempts + 1):
                    delivered += 1
                else:
                    failing.add(job.tenant)
        return delivered

    def _send(self, job: Job, attempt: int) -> bool:
        assert job.callback is not None
        refused = refusal(job.callback.url, self.allowed)
        if refused is not None and not refused.transient:
            self.store.callbacks.settle_callback(
                job.id, attempt, CallbackState.failed, f"not sent: {refused.detail}"
            )
            return False
        sent_at = datetime.now(UTC)
        error = f"not sent: {refused.detail}" if refused is not None else self._post(job, sent_at)
        if error is None:
            self.store.callbacks.settle_callback(job.id, attempt, CallbackState.delivered)
            log.info("callback delivered (attempt %d)", attempt)
            return True
        if attempt >= self.settings.webhook_attempts:
            gave_up = f"{error}; gave up after {attempt} tries"
            self.store.callbacks.settle_callback(job.id, attempt, CallbackState.failed, gave_up)
        else:
            pause = min(self.settings.webhook_retry_s * 2 ** (attempt - 1), MAX_PAUSE_S)
            next_at = sent_at + timedelta(seconds=pause)
            self.store.callbacks.settle_callback(job.id, attempt, CallbackState.pending, error, next_at)
        log.warning("callback attempt %d failed: %s", attempt, error)
        return False

    def _post(self, job: Job, sent_at: datetime) -> str | None:
        """Send the signed event; why it failed, or ``None`` when the receiver answered 2xx."""
        assert job.callback is not None
        message_id = f"{job.id}.{job.state.value}"
        body = event(job, sent_at)
        signature = Webhook(self.keys.webhook_secret(job.tenant)).sign(message_id, sent_at, body)
        headers = {
            "Content-Type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": signature,
        }
        try:
            status = self._posts.submit(self._status, job.callback.url, body, headers).result(DEADLINE_S)
        except TimeoutError:
            return f"the receiver did not answer within {DEADLINE_S:.0f} s"
        except httpx.HTTPError as failure:
            return f"the receiver could not be reached ({type(failure).__name__})"
        return None if 200 <= status < 300 else f"the receiver answered HTTP {status}"

    def _status(self, url: str, body: str, headers: dict[str, str]) -> int:
        """The answer's status; its body is never read."""
        with self._http.stream("POST", url, content=body, headers=headers) as response:
            return response.status_code
