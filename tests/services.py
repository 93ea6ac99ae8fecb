"""Real services for the service tests: a Redis of their own, a PostgreSQL database, free-port processes."""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

POSTGRES_ADMIN_URL = os.environ.get(
    "SALIENCY_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, httpx.HTTPError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout} s")


def listening(port: int) -> bool:
    """Whether something accepts connections on the loopback port."""
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


class RedisServer:
    """A private redis-server on a free port that a test may restart; with ``append_only`` it keeps its
    data in an append-only file in ``folder`` across restarts, as a production broker should."""

    def __init__(self, folder: Path, append_only: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        self._args += ["--dir", str(folder), "--appendonly", "yes" if append_only else "no"]
        self._args += ["--appendfsync", "always"]
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(self._args, stdout=subprocess.DEVNULL)
        wait_until(lambda: listening(self.port), 10, "redis")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None


@contextmanager
def redis_server(tmp: Path) -> Iterator[str]:
    """A private redis-server on a free port (nothing on disk); skips where Redis is not installed."""
    server = RedisServer(tmp)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


class PostgresServer:
    """A PostgreSQL instance of its own (initdb, pg_ctl; trust authentication) on a free port, which a test
    may stop and start; as root it runs as the postgres user, as PostgreSQL requires."""

    def __init__(self) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        binary = shutil.which("initdb")
        self.bin = Path(binary).parent if binary else found[-1].parent if found else None
        if self.bin is None:
            pytest.skip("PostgreSQL's server programs (initdb, pg_ctl) are not installed")
        self.folder = Path(tempfile.mkdtemp(prefix="saliency-pg-"))
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.folder, "postgres")
        self._run("initdb", "-D", str(self.folder / "data"), "-U", "postgres", "-A", "trust", "--no-sync")

    def _run(self, program: str, *args: str) -> None:
        subprocess.run([*self._as, str(self.bin / program), *args], check=True, capture_output=True)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.folder / "server.log")
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-o", options, "-l", log, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@contextmanager
def s3_server(log: Path) -> Iterator[str]:
    """moto's standalone S3-compatible server on a free loopback port; yields its endpoint URL."""
    port = free_port()
    args = [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with process(args, {}, log):
        endpoint = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{endpoint}/moto-api/").is_success, 30, "S3 server")
        yield endpoint


def new_bucket(endpoint: str) -> str:
    """An empty bucket of its own for one test (moto takes unsigned requests)."""
    name = f"audit-{uuid.uuid4().hex[:12]}"
    httpx.put(f"{endpoint}/{name}").raise_for_status()
    return name


S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret"}


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database on the PostgreSQL server, dropped afterwards; skips where none is reachable."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"saliency_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f"CREATE DATABASE {name}"))
    except OperationalError as error:
        admin.dispose()
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL} ({type(error).__name__})")
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def empty_tables(url: str) -> None:
    """Give a test a job store of its own inside the session's PostgreSQL database."""
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(url)
    with engine.begin() as connection:
        tables = set(inspect(connection).get_table_names()) & {"jobs", "artifacts", "audit_units"}
        if tables:
            connection.execute(text(f"TRUNCATE {', '.join(sorted(tables))}"))
    engine.dispose()


@contextmanager
def process(
    args: list[str], env: dict[str, str], log: Path, cwd: Path | None = None, inherit: bool = True
) -> Iterator[subprocess.Popen]:
    """A child process stopped on exit; ``env`` adds to this process's environment, or replaces it when
    ``inherit`` is false."""
    with log.open("wb") as output:
        environment = os.environ | env if inherit else env
        child = subprocess.Popen(args, env=environment, stdout=output, stderr=subprocess.STDOUT, cwd=cwd)
        try:
            yield child
        finally:
            child.terminate()
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def create_api_key(env: dict[str, str], tenant: str, scopes: str = "read,submit") -> str:
    """An API key made as an operator makes one (``saliency-audit keys create``) in the job store that
    ``env`` names; the store is created if it does not exist yet."""
    return subprocess.run(
        [str(VENV_BIN / "saliency-audit"), "keys", "create", "--tenant", tenant, "--scopes", scopes],
        env=os.environ | env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@contextmanager
def api_server(
    env: dict[str, str], log: Path, cwd: Path | None = None
) -> Iterator[tuple[str, subprocess.Popen]]:
    """``saliency-audit serve`` on a free port; yields its base URL (once /healthz answers) and process."""
    port = free_port()
    with process([str(VENV_BIN / "saliency-audit"), "serve", "--port", str(port)], env, log, cwd) as child:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: child.poll() is None and httpx.get(f"{url}/healthz").is_success, 60, "API")
        yield url, child


# a Celery worker with one prefork child on the CPU queue
CELERY_CPU_WORKER = [
    str(VENV_BIN / "celery"),
    "-A",
    "workers.worker.celery_app",
    "worker",
    "-Q",
    "audit-cpu",
    "-c",
    "1",
]


@contextmanager
def celery_worker(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """A real Celery worker process (prefork, one child) consuming the CPU queue."""
    args = [*CELERY_CPU_WORKER, "--loglevel", "INFO", "-n", f"test-{uuid.uuid4().hex[:6]}@%h"]
    with process(args, env, log) as child:
        wait_until(lambda: b"ready." in log.read_bytes(), 90, "celery worker")
        yield child


@contextmanager
def distributed_deployment(
    folder: Path,
    redis_url: str,
    database_url: str,
    settings: dict[str, str] | None = None,
    shared_data_dir: bool = True,
    workers: int = 1,
    worker_env: dict[str, str] | None = None,
) -> Iterator[tuple[str, list[subprocess.Popen]]]:
    """The API and ``workers`` Celery workers sharing a broker and a job store; ``settings`` adds
    ``SALIENCY_*`` variables for all, ``worker_env`` more variables for the workers. Without
    ``shared_data_dir`` the workers have a data directory of their own, as on other machines (what they
    share must then be in the object store). Worker logs: ``worker.log``, then ``worker-2.log``..."""
    env = {
        "SALIENCY_DATA_DIR": str(folder / "data"),
        "SALIENCY_DATABASE_URL": database_url,
        "SALIENCY_BROKER_URL": redis_url,
    } | (settings or {})
    worker_env = (env if shared_data_dir else env | {"SALIENCY_DATA_DIR": str(folder / "worker-data")}) | (
        worker_env or {}
    )
    with contextlib.ExitStack() as stack:
        url, _ = stack.enter_context(api_server(env, folder / "api.log"))
        started = [
            stack.enter_context(celery_worker(worker_env, folder / worker_log(index)))
            for index in range(workers)
        ]
        yield url, started


def worker_log(index: int) -> str:
    return "worker.log" if index == 0 else f"worker-{index + 1}.log"
