"""Service benchmark: the mnist-lenet audit through the API, Redis and a Celery worker, and status polls.

Starts its own Redis, a PostgreSQL database, ``saliency-audit serve`` (one uvicorn worker) and one Celery
worker; times POST -> succeeded for the full default audit, then loads the finished job's status route and
the bare ``/healthz`` endpoint of the same server with wrk (Debian package ``wrk``) on loopback, alternating,
and prints polls per second of each and their ratio; writes bench/service.json. Usage::

    python -m bench.service_lenet ../shared/data/mnist-lenet [--seconds 10] [--connections 16] [--rounds 2]
"""

import argparse
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from bench.tables import markdown_table
from tests.e2e import poll, submit, upload
from tests.services import distributed_deployment, postgres_database, redis_server


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path, help="folder with lenet_mnist.onnx and probes.npz")
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration (default: 10)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default: 16)")
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternations of the two endpoints (default: 2)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with (
            redis_server(folder) as redis_url,
            postgres_database() as database_url,
            distributed_deployment(folder, redis_url, database_url) as (url, _workers),
            httpx.Client(base_url=url, timeout=30) as client,
        ):
            model = upload(client, "/v1/models", (args.data / "lenet_mnist.onnx").read_bytes())
            probes = upload(client, "/v1/probe-sets", (args.data / "probes.npz").read_bytes())
            started = time.perf_counter()
            location = submit(client, {"model": model, "probes": probes})
            job = poll(client, location, {"succeeded", "failed", "cancelled"}, timeout=900)
            elapsed = time.perf_counter() - started
            stamps = job["timestamps"]
            print(f"POST -> {job['state']}: {elapsed:.1f} s (polled every 0.2 s)")
            print(f"  timestamps: {stamps}")
            if shutil.which("wrk") is None:
                print("wrk is not installed (apt-get install wrk): no poll load measured")
                return
            rounds = [
                {
                    "status": _wrk(f"{url}{location}", args.seconds, args.connections),
                    "healthz": _wrk(f"{url}/healthz", args.seconds, args.connections),
                }
                for _ in range(args.rounds)
            ]
    rows = [
        [index, f"{r['status']:.0f}", f"{r['healthz']:.0f}", f"{r['status'] / r['healthz']:.2f}x"]
        for index, r in enumerate(rounds, start=1)
    ]
    print("\n" + markdown_table(["round", "status polls/s", "/healthz requests/s", "ratio"], rows))
    result = {
        "audit_seconds": elapsed,
        "connections": args.connections,
        "seconds": args.seconds,
        "rounds": rounds,
    }
    (Path(__file__).parent / "service.json").write_text(json.dumps(result, indent=2) + "\n")


def _wrk(url: str, seconds: int, connections: int) -> float:
    """Requests per second that wrk (2 threads) gets from ``url``."""
    output = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", url], capture_output=True, text=True, check=True
    ).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if rate is None or "Non-2xx" in output:
        raise RuntimeError(f"wrk did not get plain 2xx answers from {url}:\n{output}")
    return float(rate.group(1))


if __name__ == "__main__":
    main()
