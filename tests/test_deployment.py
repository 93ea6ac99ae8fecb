"""What the images and the compose file promise: an API that runs without the engine's packages, pinned
non-root images with healthchecks, a compose file the compose tool accepts, every setting documented."""

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.conftest import TrainedDigits
from workers.core.config import Settings

ROOT = Path(__file__).parents[1]
ENGINE_PACKAGES = ("torch", "captum", "onnxruntime", "onnxscript", "scipy", "matplotlib", "sklearn")

_API_WITHOUT_ENGINE = """
import importlib.abc, sys
from pathlib import Path

class NoEngine(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {engine}:
            raise ImportError(f"{{name}} is not installed in the API image")

sys.meta_path.insert(0, NoEngine())
from fastapi.testclient import TestClient
from service.api.app import create_app
from workers.core.config import Settings

folder = Path(sys.argv[1])
settings = Settings(data_dir=folder / "data", broker_url="memory://", auth="local")
octet = {{"Content-Type": "application/octet-stream"}}
with TestClient(create_app(settings)) as client:
    assert client.get("/readyz").status_code == 200
    model = client.post("/v1/models", content=Path(sys.argv[2]).read_bytes(), headers=octet)
    probes = client.post("/v1/probe-sets", content=Path(sys.argv[3]).read_bytes(), headers=octet)
    assert model.status_code == probes.status_code == 201, (model.text, probes.text)
    body = {{"model": model.json()["sha256"], "probes": probes.json()["sha256"]}}
    job = client.post("/v1/audits", json=body)
    assert job.status_code == 202, job.text
    assert client.get("/metrics").status_code == 200
print("served")
"""


def test_the_api_validates_uploads_and_queues_audits_without_the_engines_packages(
    trained_digits: TrainedDigits, tmp_path: Path
) -> None:
    code = _API_WITHOUT_ENGINE.format(engine=set(ENGINE_PACKAGES))
    inputs = [str(tmp_path), str(trained_digits.onnx_legacy), str(trained_digits.probes)]
    done = subprocess.run([sys.executable, "-c", code, *inputs], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and "served" in done.stdout, done.stderr[-3000:]


def test_serve_without_the_engine_refuses_to_run_audits_itself(tmp_path: Path) -> None:
    blocker = _API_WITHOUT_ENGINE.format(engine=set(ENGINE_PACKAGES)).split("from fastapi")[0]
    code = blocker + "from workers.cli.main import main\nsys.exit(main(['serve', '--data-dir', sys.argv[1]]))"
    command = [sys.executable, "-c", code, str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "saliency-audit[engine]" in done.stderr, done.stderr[-2000:]


def test_the_package_core_leaves_the_engine_to_its_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=\[ ]", requirement)[0] for requirement in project["dependencies"]}
    engine_only = {"torch", "captum", "onnxruntime", "onnxscript", "scipy", "matplotlib", "scikit-learn"}
    assert names.isdisjoint(engine_only)
    assert any(requirement.startswith("torch") for requirement in project["optional-dependencies"]["engine"])


def _stages(dockerfile: str) -> dict[str, str]:
    """Each ``FROM ... AS name`` stage's text."""
    parts = re.split(r"^FROM \S+ AS (\S+)$", dockerfile, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_each_image_runs_unprivileged_with_a_healthcheck_and_pinned_versions() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:\d+\.\d+\.\d+-slim-\w+$", dockerfile, re.MULTILINE)
    stages = _stages(dockerfile)
    assert {"api", "worker-cpu", "worker-gpu"} <= set(stages)
    for name in ("api", "worker-cpu", "worker-gpu"):
        assert re.search(r"^USER audit$", stages[name], re.MULTILINE), name
        assert "HEALTHCHECK" in stages[name], name
        assert "-c constraints.txt" in stages[name], name
    assert "torch" not in stages["api"] and "[engine]" not in stages["api"]
    assert "torch==2.13.0" in stages["worker-cpu"] and "torch==2.13.0" in stages["worker-gpu"]
    constraints = (ROOT / "docker" / "constraints.txt").read_text().splitlines()
    pins = [line for line in constraints if line and not line.startswith("#")]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9._-]+(\[[^\]]+\])?==[^ ]+", line) for line in pins), pins


def test_compose_runs_api_workers_and_stores_with_pinned_images_and_persistence() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"api", "worker", "worker-gpu", "redis", "postgres", "minio"} <= set(services)
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    assert services["api"]["build"]["target"] == "api"
    assert "--appendonly" in services["redis"]["command"]
    for name, service in services.items():
        image = service.get("image", "")
        assert re.search(r":[\w.-]*\d", image) and not image.endswith(":latest"), (name, image)
    stores = {"SALIENCY_STORAGE_URL", "SALIENCY_DATABASE_URL", "SALIENCY_BROKER_URL"}
    for name in ("api", "worker", "worker-gpu"):
        assert stores <= set(services[name]["environment"]), name
        assert "volumes" not in services[name], f"{name} shares nothing but the stores"


def _docker_has_compose() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    return subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0


def test_the_compose_tool_accepts_the_file() -> None:
    tool = shutil.which("docker-compose")
    compose = [tool] if tool else ["docker", "compose"]
    if tool is None and not _docker_has_compose():
        pytest.skip("no compose tool here (apt-get install docker-compose)")
    for profiles in ([], ["--profile", "gpu", "--profile", "cli"]):
        done = subprocess.run([*compose, *profiles, "config", "-q"], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


def test_every_setting_is_in_the_readme_table() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in Settings.model_fields if f"`SALIENCY_{name.upper()}`" not in readme]
    assert missing == []
