"""Completion callbacks: signed the Standard Webhooks way and checked with that library's verifier,
retried after a failure, never sent to private addresses unless the operator allows them."""

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from service.api.callback_urls import AllowList, refusal
from service.api.webhooks import WebhookSender
from service.client.http import AuditClient
from tests.conftest import TrainedDigits
from tests.services import api_server, wait_until
from tests.test_api import OCTET, make_client
from workers.core.audit_settings import AuditSettings
from workers.core.config import Settings
from workers.core.requests import AuditRequest
from workers.core.store.jobs import JobStore
from workers.core.store.keys import KeyStore
from workers.core.store.states import CallbackState, JobResult, JobState

FAST = AuditSettings(methods=["gradient"], tests=["cascading"])


class Receiver:
    """A webhook receiver on loopback that answers each request with the next of ``statuses`` (the last
    one once they run out) and keeps what it was sent."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers.items()), body))
                index = min(len(receiver.received), len(receiver.statuses)) - 1
                self.send_response(receiver.statuses[index])
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/audits"


@contextmanager
def receiver(statuses: list[int]) -> Iterator[Receiver]:
    hooks = Receiver(statuses)
    thread = threading.Thread(target=hooks.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hooks
    finally:
        hooks.server.shutdown()
        hooks.server.server_close()


# --- which URLs are called --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.org/hook", "http or https"),
        ("https://user:secret@example.org/hook", "credentials"),
        ("http://127.0.0.1:8080/hook", "127.0.0.1"),
        ("http://localhost/hook", "host localhost is or resolves to a private"),
        ("http://10.2.3.4/hook", "10.2.3.4"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),  # a cloud's metadata service
        ("http://[::ffff:127.0.0.1]/hook", "127.0.0.1"),
        ("http://[::1]:9000/hook", "::1"),
        ("http://[64:ff9b::a9fe:a9fe]/latest/meta-data/", "64:ff9b::a9fe:a9fe"),  # NAT64 of 169.254.169.254
        ("http://[2002:a9fe:a9fe::]/hook", "2002:a9fe:a9fe::"),  # 6to4
        ("http://[::a9fe:a9fe]/hook", "::a9fe:a9fe"),  # IPv4-compatible
        ("http://0.0.0.0/hook", "0.0.0.0"),
        ("http://no-such-host.invalid/hook", "does not resolve"),
        ("http://example.org:99999/hook", "not a valid URL"),
    ],
)
def test_private_loopback_reserved_and_odd_urls_are_refused(url: str, reason: str) -> None:
    refused = refusal(url, AllowList([]))
    assert refused is not None and reason in refused.detail


def test_the_allow_list_admits_named_hosts_and_networks_and_nothing_more() -> None:
    allowed = AllowList(["127.0.0.0/8", "localhost"])
    assert refusal("http://127.0.0.1:8080/hook", allowed) is None
    assert refusal("http://LOCALHOST/hook", allowed) is None
    assert refusal("http://10.0.0.1/hook", allowed) is not None
    assert refusal("https://93.184.216.34/hook", AllowList([])) is None  # a public address


def test_a_submit_with_a_private_callback_is_refused_with_a_problem(
    trained_digits: TrainedDigits, tmp_path: Path, database_url: str
) -> None:
    with make_client(tmp_path, database_url, "memory://") as client:
        model = client.post("/v1/models", content=trained_digits.onnx_legacy.read_bytes(), headers=OCTET)
        probes = client.post("/v1/probe-sets", content=trained_digits.probes.read_bytes(), headers=OCTET)
        body = {
            "model": model.json()["sha256"],
            "probes": probes.json()["sha256"],
            "callback_url": "http://169.254.169.254/latest/meta-data/",
        }
        refused = client.post("/v1/audits", json=body)
        assert refused.status_code == 422
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["type"] == "/problems/callback-url-refused"
        assert "169.254.169.254" in refused.json()["detail"]
        assert client.get("/v1/audits").json()["items"] == []


# --- delivery --------------------------------------------------------------------------------------------


def _ended_job(store: JobStore, callback_url: str) -> str:
    request = AuditRequest(model="a" * 64, probes="b" * 64, callback_url=callback_url)
    job, _ = store.jobs.create_job("team", request.model_dump(mode="json"), "hash", None, "cpu")
    store.attempts.claim(job.id)
    store.attempts.finish(job.id, JobState.succeeded, attempt=1, result=JobResult("c" * 64, 1, "d" * 64, 1))
    return job.id


def _sender(store: JobStore, **settings: object) -> WebhookSender:
    defaults = {"webhook_allowed_hosts": ["127.0.0.1"], "webhook_retry_s": 0.2}
    return WebhookSender(store, KeyStore(store.engine), Settings(**(defaults | settings)))


def test_a_failed_delivery_is_retried_after_its_pause_and_then_delivered(store: JobStore) -> None:
    with receiver([500, 204]) as hooks:
        job_id = _ended_job(store, hooks.url)
        sender = _sender(store)
        assert sender.send_due() == 0 and len(hooks.received) == 1
        callback = store.jobs.get_job(job_id).callback
        assert callback.state is CallbackState.pending and "HTTP 500" in (callback.error or "")
        assert sender.send_due() == 0 and len(hooks.received) == 1  # not before its pause
        time.sleep(0.3)
        assert sender.send_due() == 1 and len(hooks.received) == 2
        assert sender.send_due() == 0 and len(hooks.received) == 2  # delivered once
    callback = store.jobs.get_job(job_id).callback
    assert callback.state is CallbackState.delivered and callback.attempts == 2
    (first, _), (second, _) = hooks.received
    assert first["webhook-id"] == second["webhook-id"] == f"{job_id}.succeeded"


def test_a_receiver_that_keeps_failing_is_given_up_on_after_the_attempts(store: JobStore) -> None:
    with receiver([503]) as hooks:
        job_id = _ended_job(store, hooks.url)
        sender = _sender(store, webhook_attempts=3, webhook_retry_s=0.05)
        deadline = time.monotonic() + 10
        while (
            store.jobs.get_job(job_id).callback.state is CallbackState.pending and time.monotonic() < deadline
        ):
            sender.send_due()
            time.sleep(0.05)
    callback = store.jobs.get_job(job_id).callback
    assert callback.state is CallbackState.failed and callback.attempts == 3 and len(hooks.received) == 3
    assert "gave up after 3 tries" in (callback.error or "")


def test_a_try_whose_claim_lapsed_and_was_taken_again_records_nothing(store: JobStore) -> None:
    job_id = _ended_job(store, "http://127.0.0.1:9/hook")
    assert store.callbacks.claim_callback(job_id, 0, hold_s=0)  # the first sender stalls past its hold
    assert store.callbacks.claim_callback(job_id, 1, hold_s=60)  # another takes the callback over
    store.callbacks.settle_callback(job_id, 2, CallbackState.delivered)
    store.callbacks.settle_callback(job_id, 1, CallbackState.failed, "the stalled try, late")
    callback = store.jobs.get_job(job_id).callback
    assert callback.state is CallbackState.delivered and callback.error is None


def test_an_address_no_longer_allowed_at_delivery_is_not_called(store: JobStore) -> None:
    with receiver([204]) as hooks:
        job_id = _ended_job(store, hooks.url)
        _sender(store, webhook_allowed_hosts=[]).send_due()
    callback = store.jobs.get_job(job_id).callback
    assert hooks.received == [] and callback.state is CallbackState.failed
    assert "127.0.0.1" in (callback.error or "")


def test_the_service_calls_back_when_an_audit_ends_signed_for_the_tenant(
    trained_digits: TrainedDigits, tmp_path: Path
) -> None:
    env = {
        "SALIENCY_DATA_DIR": str(tmp_path / "data"),
        "SALIENCY_WEBHOOK_ALLOWED_HOSTS": '["127.0.0.1"]',
        "SALIENCY_WEBHOOK_RETRY_S": "0.5",
    }
    with (
        receiver([502, 204]) as hooks,
        api_server(env, tmp_path / "api.log") as (url, _),
        AuditClient(url) as client,
    ):
        secret = client.webhook_secret()
        assert secret.startswith("whsec_") and client.webhook_secret() == secret
        job = client.audit(
            trained_digits.onnx_legacy, trained_digits.probes, FAST, callback_url=hooks.url, timeout_s=300
        )
        assert job.state is JobState.succeeded, job.error
        wait_until(lambda: client.job(job.id).callback.state is CallbackState.delivered, 30, "callback")
        assert client.job(job.id).callback.attempts == 2
    headers, body = hooks.received[-1]
    payload = Webhook(secret).verify(body, headers)  # what a receiver runs
    assert payload["type"] == "audit.succeeded" and payload["data"]["id"] == job.id
    assert payload["data"]["result"]["report_sha256"] == job.result.report_sha256
    tampered = json.dumps(payload | {"type": "audit.failed"}).encode()
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(tampered, headers)
