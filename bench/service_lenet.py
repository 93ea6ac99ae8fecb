"""Service benchmark: the mnist-lenet audit through the API, Redis and a Celery worker, and status polls.

Starts its own Redis, a PostgreSQL database, ``saliency-audit serve`` (one uvicorn worker) and one Celery
worker; times POST -> succeeded for the full default audit, then loads the job's status route with wrk
(Debian package ``wrk``) on loopback. Usage::

    python -m bench.service_lenet ../shared/data/mnist-lenet [--seconds 10] [--connections 16]
"""

import argparse
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from tests.e2e import poll, submit, upload
from tests.services import distributed_deployment, postgres_database, redis_server


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path, help="folder with lenet_mnist.onnx and probes.npz")
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration (default: 10)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default: 16)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with (
            redis_server(folder) as redis_url,
            postgres_database() as database_url,
            distributed_deployment(folder, redis_url, database_url) as (url, _worker),
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
            print(_wrk(f"{url}{location}", args.seconds, args.connections))


def _wrk(url: str, seconds: int, connections: int) -> str:
    if shutil.which("wrk") is None:
        return "wrk is not installed (apt-get install wrk): no poll load measured"
    output = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url], capture_output=True, text=True
    ).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    return f"status polls: {rate.group(1) if rate else '?'} requests/s\n{output}"


if __name__ == "__main__":
    main()
