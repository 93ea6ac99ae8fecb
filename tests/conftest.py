"""Shared fixtures: a digits CNN trained once per session, its exports, and probe files; and how the suite
shares the machine's cores when pytest-xdist runs it in several processes (``scripts/test``)."""

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.digits import DigitsCNN, DigitsData, digits_data, export_onnx, train_digits_cnn
from tests.services import S3_CREDENTIALS, empty_tables, postgres_database, redis_server, s3_server
from workers.core.store.database import make_engine, migrate
from workers.core.store.jobs import JobStore

# Modules whose tests share minutes of module-scoped work (seed sweeps, trained twins, exports of every
# architecture, live deployments). Workers take whole files (--dist loadfile) in collection order: these go
# first, so no worker starts one of them when the others are nearly done.
LONG_MODULES = (
    "test_verdict_stability.py",
    "test_fault_matrix.py",
    "test_readme.py",
    "test_architectures.py",
    "test_e2e_celery.py",
    "test_audit_cli.py",
    "test_data_randomization.py",
    "test_e2e_embedded.py",
    "test_client.py",
    "test_hostile_inputs.py",
)


def pytest_configure(config: pytest.Config) -> None:
    """Each of N parallel workers gets 1/N of the cores, for its own torch and the processes it starts:
    small models scale poorly across threads, and oversubscribed OpenMP threads spin."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: position for position, name in enumerate(LONG_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: other files keep their order


@dataclass(frozen=True)
class TrainedDigits:
    model: DigitsCNN
    data: DigitsData
    onnx_legacy: Path  # torch's legacy exporter, opset 17
    onnx_dynamo: Path  # torch's dynamo exporter, opset 18+
    probes: Path  # .npz with x and y: 48 held-out images


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory: pytest.TempPathFactory) -> TrainedDigits:
    folder = tmp_path_factory.mktemp("digits")
    data = digits_data()
    model = train_digits_cnn(data)
    export_onnx(model, folder / "legacy.onnx", dynamo=False)
    export_onnx(model, folder / "dynamo.onnx", dynamo=True)
    np.savez(folder / "probes.npz", x=data.x_test[:48], y=data.y_test[:48])
    return TrainedDigits(model, data, folder / "legacy.onnx", folder / "dynamo.onnx", folder / "probes.npz")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An S3-compatible server on loopback (moto); the AWS_* variables obstore reads point at it."""
    with pytest.MonkeyPatch.context() as env, s3_server(tmp_path_factory.mktemp("s3") / "s3.log") as url:
        for name, value in S3_CREDENTIALS.items():
            env.setenv(name, value)
        yield url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each job-store test runs against both backends the service supports."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    url = request.getfixturevalue("postgres_url")
    empty_tables(url)
    return url


@pytest.fixture
def store(database_url: str) -> Iterator[JobStore]:
    """A migrated job store on each backend."""
    engine = make_engine(database_url)
    migrate(engine)
    migrate(engine)  # a second start finds the schema current
    store = JobStore(engine)
    yield store
    store.close()
