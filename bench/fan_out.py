"""One audit on one Celery worker against two (issue 27, docs/decisions/0026).

    python -m bench.fan_out [--width 8] [--size 32] [--images 16] [--rounds 1]

The ResNet-50-like model of bench/stage_passes.py (Bottleneck, 3/4/6/3, random weights, legacy ONNX
export) audited through the real deployment with the default settings: the API, Redis and a fresh
PostgreSQL database on loopback, and one or two Celery worker processes, each one process with one torch
thread. Rounds alternate one worker and two; each times submit to succeeded, as a client sees it. Checks
that the two reports agree number for number. Writes bench/fan_out.json.
"""

import json
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from bench.matched import machine
from bench.stage_passes import model_arguments, write_inputs
from bench.tables import markdown_table
from tests.e2e import poll, report_numbers, submit, upload
from tests.services import distributed_deployment, postgres_database, redis_server
from workers.core.report import AuditReport

HERE = Path(__file__).parent
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def audit_on(workers: int, model: Path, probes: Path, folder: Path) -> tuple[float, AuditReport]:
    """Seconds from submit to succeeded with ``workers`` Celery workers, and the report."""
    (folder / "redis").mkdir()
    with ExitStack() as stack:
        redis_url = stack.enter_context(redis_server(folder / "redis"))
        database_url = stack.enter_context(postgres_database())
        url, _ = stack.enter_context(
            distributed_deployment(folder, redis_url, database_url, workers=workers, worker_env=ONE_THREAD)
        )
        client = stack.enter_context(httpx.Client(base_url=url, timeout=60))
        body = {
            "model": upload(client, "/v1/models", model.read_bytes()),
            "probes": upload(client, "/v1/probe-sets", probes.read_bytes()),
        }
        started = time.perf_counter()
        location = submit(client, body)
        job = poll(client, location, {"succeeded", "failed", "cancelled"}, timeout=24 * 3600)
        seconds = time.perf_counter() - started
        assert job["state"] == "succeeded", job["error"]
        return seconds, AuditReport.model_validate_json(client.get(f"{location}/report").content)


def main() -> None:
    parser = model_arguments(__doc__)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    model, probes = write_inputs(folder, args.width, args.size, args.images)
    seconds: dict[int, list[float]] = {1: [], 2: []}
    reports: dict[int, AuditReport] = {}
    for round_ in range(args.rounds):
        for workers in (1, 2):
            run_folder = folder / f"round-{round_}-workers-{workers}"
            run_folder.mkdir()
            took, reports[workers] = audit_on(workers, model, probes, run_folder)
            seconds[workers].append(took)
            print(f"round {round_ + 1}, {workers} worker(s): {took:.1f} s", flush=True)
    identical = report_numbers(reports[1]) == report_numbers(reports[2])
    one, two = statistics.median(seconds[1]), statistics.median(seconds[2])
    print(f"\nmachine: {machine()}\n")
    rows = [
        [w, ", ".join(f"{s:.1f}" for s in seconds[w]), f"{statistics.median(seconds[w]):.1f}"] for w in (1, 2)
    ]
    print(markdown_table(["workers", "seconds per round", "median"], rows))
    print(f"\none worker / two workers: {one / two:.2f}x; reports identical number for number: {identical}")
    passes = reports[1].image_passes
    result = {
        "machine": machine(),
        "width": args.width,
        "size": args.size,
        "images": args.images,
        "seconds": seconds,
        "ratio": one / two,
        "identical": identical,
        "backward_image_passes": passes.backward if passes else None,
    }
    (HERE / "fan_out.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
