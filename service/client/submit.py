"""``saliency-audit submit --server URL MODEL PROBES``: the audit on a remote service, as a CI gate.

Uploads what the server lacks, submits, and with ``--wait`` follows the job with a progress bar, downloads
the report, the HTML report and the map archive, prints the summary and exits with a code a CI system can
act on (``EXIT_CODES``). Torch-free: the work happens on the server.
"""

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from workers.core.audit_settings import AuditSettings, Outcome

if TYPE_CHECKING:  # the HTTP client is imported when the command runs: `--help` stays quick
    from service.client.http import AuditClient

EXIT_PASSED = 0
EXIT_FAILED_CHECK = 1  # a judged outcome is one --fail-on names
EXIT_REFUSED = 2  # the service refused the inputs or settings (a 4xx, or a job failed as refused)
EXIT_SERVICE = 3  # the service failed, was unreachable, cancelled the audit, or --timeout passed
EXIT_CODES = {
    EXIT_PASSED: "submitted (without --wait), or the audit finished and no outcome is one --fail-on names",
    EXIT_FAILED_CHECK: "a model-based method's outcome is one --fail-on names",
    EXIT_REFUSED: "the service refused the inputs or settings: fix them (the message says what)",
    EXIT_SERVICE: "the service failed, was unreachable or cancelled the audit, or --timeout passed: retry",
}


def add_submit_arguments(submit: argparse.ArgumentParser) -> None:
    add = submit.add_argument
    add("--server", required=True, help="the service's base URL, e.g. https://audits.example.com")
    add(
        "--api-key",
        default=os.environ.get("SALIENCY_API_KEY"),
        help="API key (default: $SALIENCY_API_KEY; none for a local service on loopback)",
    )
    add("--wait", action="store_true", help="follow the audit to its end, download its results, judge it")
    add("--timeout", type=float, help="with --wait, give up after this many seconds (exit 3)")
    add(
        "--idempotency-key", help="resubmitting with the same key returns the same audit (default: a new key)"
    )
    add(
        "--ride-out",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="retry a request met by 429, 502-504, 507 or a connection failure, after the server's "
        "Retry-After or a growing backoff, for up to this long (default: 300): a pipeline rides out an "
        "outage of the service's database, broker or disk",
    )


def run_submit(args: argparse.Namespace, settings: AuditSettings) -> int:
    import httpx

    from service.client.http import AuditClient, ServiceError

    try:
        with AuditClient(args.server, args.api_key, ride_out_s=args.ride_out) as client:
            return _submit(client, args, settings)
    except ServiceError as error:
        print(f"saliency-audit: error: {error}", file=sys.stderr)
        return EXIT_REFUSED if error.client_error else EXIT_SERVICE
    except (httpx.HTTPError, TimeoutError) as error:  # unreachable, or still running at --timeout
        print(f"saliency-audit: error: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_SERVICE


def _submit(client: "AuditClient", args: argparse.Namespace, settings: AuditSettings) -> int:
    from service.api.schemas import JobOut
    from workers.core.requests import ArtifactKind, AuditRequest
    from workers.core.store.states import JobState

    def uploaded(kind: ArtifactKind, source: Path) -> str:
        artifact, sent = client.upload(kind, source)
        if not args.quiet:
            print(
                f"{source.name}: {'uploaded' if sent else 'already on the server'} ({artifact.sha256[:12]})",
                file=sys.stderr,
            )
        return artifact.sha256

    request = AuditRequest(
        model=uploaded(ArtifactKind.model, args.model),
        probes=uploaded(ArtifactKind.probes, args.probes),
        settings=settings,
        twins=[uploaded(ArtifactKind.model, twin) for twin in args.twin or []],
        controls=[uploaded(ArtifactKind.model, control) for control in args.control or []],
        training_data=None
        if args.train_data is None
        else uploaded(ArtifactKind.training_data, args.train_data),
    )
    job = client.submit(request, args.idempotency_key)
    print(f"audit {job.id}: {job.state} ({args.server.rstrip('/')}{job.links.self})", file=sys.stderr)
    if not args.wait:
        print(job.id)
        return EXIT_PASSED
    with tqdm(desc="auditing", unit="step", disable=args.quiet, file=sys.stderr) as bar:

        def on_progress(current: JobOut) -> None:
            bar.total = current.progress.total or None
            bar.set_postfix_str(current.progress.phase or current.state, refresh=False)
            bar.update(current.progress.done - bar.n)

        job = client.wait(job.id, timeout_s=args.timeout, on_progress=on_progress)
    if job.state is not JobState.succeeded:
        error = job.error
        print(
            f"audit {job.id}: {job.state}: {error.detail if error else 'no error recorded'}", file=sys.stderr
        )
        refused = error is not None and 400 <= error.status < 500
        return EXIT_REFUSED if refused else EXIT_SERVICE
    report = client.report(job.id)
    paths = [client.download(job.id, what, args.out) for what in ("report", "report.html", "archive")]
    from workers.core.summary import format_summary

    print(format_summary(report))
    print(
        "\n".join(f"{label}: {path}" for label, path in zip(("json", "report", "maps"), paths, strict=True))
    )
    fail_on = args.fail_on | ({Outcome.failed} if args.fail_on_verdict else set())
    outcomes = {test.verdict.outcome for method in report.methods for test in method.tests if test.verdict}
    return EXIT_FAILED_CHECK if outcomes & fail_on else EXIT_PASSED
