"""The layout: one package per role, dependencies pointing one way (README, Layout; decision 0027).

Read from the source (every import statement, those inside functions too), so an import added anywhere
in a module counts, whether or not a test runs it."""

import ast
import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
CORE, ENGINE, WORKER, CLI, API, CLIENT = (
    "workers.core",
    "workers.engine",
    "workers.worker",
    "workers.cli",
    "service.api",
    "service.client",
)
# each role's allowed imports of the project's other roles and of the frameworks that define the roles
ALLOWED = {
    CORE: set(),
    ENGINE: {CORE, "torch"},
    WORKER: {CORE, ENGINE, "torch", "celery"},
    API: {CORE, WORKER, "fastapi"},
    CLIENT: {CORE, API},
    CLI: {CORE, ENGINE, WORKER, API, CLIENT, "torch"},
}
FRAMEWORKS = ("torch", "fastapi", "celery")
# what runs models: imported only where torch may be
TORCH_SIDE = {"torch", "captum", "onnxruntime", "onnxscript", "torchvision", "scipy", "matplotlib", "sklearn"}


def _role(module: str) -> str | None:
    return next((role for role in ALLOWED if module == role or module.startswith(role + ".")), None)


@functools.cache
def _modules() -> dict[str, Path]:
    modules = {}
    for package in ("service", "workers"):
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = path
    return modules


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@functools.cache
def _dependencies() -> dict[tuple[str, str], set[str]]:
    """(role, imported role or framework) -> the modules of ``role`` that import it."""
    edges: dict[tuple[str, str], set[str]] = {}
    for module, path in _modules().items():
        role = _role(module)
        for imported in _imports(path):
            top = imported.split(".")[0]
            target = _role(imported) or ("torch" if top in TORCH_SIDE else top if top in FRAMEWORKS else None)
            if role and target and target != role:
                edges.setdefault((role, target), set()).add(module)
    return edges


def test_every_module_belongs_to_one_role() -> None:
    homeless = [m for m in _modules() if _role(m) is None and m not in ("service", "workers")]
    assert not homeless


def test_the_top_level_packages_import_nothing_and_no_module_imports_relatively() -> None:
    modules = _modules()
    assert not _imports(modules["service"]) and not _imports(modules["workers"])
    relative = [
        module
        for module, path in modules.items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.level > 0
    ]
    assert not relative


def test_importing_the_core_the_api_and_the_client_loads_neither_torch_nor_the_engine() -> None:
    """What the static graph cannot see: an allowed import (the API's of the worker) that pulls the engine
    or torch in at import time."""
    torch_free = [
        module
        for module in _modules()
        if _role(module) in (CORE, API, CLIENT) and ".migrations" not in module
    ]
    code = (
        f"import importlib, sys\nfor m in {torch_free!r}: importlib.import_module(m)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'captum', 'onnxruntime'} "
        "or m.startswith(('workers.engine', 'workers.cli'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert loaded.stdout.strip() == "[]"


@pytest.mark.parametrize("role", list(ALLOWED))
def test_a_role_imports_only_the_roles_below_it(role: str) -> None:
    stray = {
        target: sorted(modules)
        for (source, target), modules in _dependencies().items()
        if source == role and target not in ALLOWED[role]
    }
    assert not stray


def test_no_two_roles_import_each_other() -> None:
    roles = {(s, t) for s, t in _dependencies() if t in ALLOWED}
    assert not {(s, t) for s, t in roles if (t, s) in roles}
    order: list[str] = []  # a topological order exists: the graph has no cycle of any length
    pending = set(ALLOWED)
    while pending:
        ready = {r for r in pending if all(t in order for s, t in roles if s == r)}
        assert ready, f"a cycle among {sorted(pending)}"
        order.extend(sorted(ready))
        pending -= ready


def test_the_api_and_the_core_never_import_torch() -> None:
    edges = _dependencies()
    assert (API, "torch") not in edges and (CLIENT, "torch") not in edges and (CORE, "torch") not in edges


def test_the_engine_imports_neither_fastapi_nor_celery_nor_the_service() -> None:
    assert {t for s, t in _dependencies() if s == ENGINE} <= {CORE, "torch"}


def test_the_readme_layout_names_every_package_and_nothing_that_is_not_there() -> None:
    readme = (ROOT / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("```")[1]
    listed = set(re.findall(r"^((?:service|workers)/[\w/]*?)/?\s", layout, flags=re.MULTILINE))
    packages = {
        str(init.parent.relative_to(ROOT))
        for package in ("service", "workers")
        for init in (ROOT / package).glob("*/__init__.py")
    }
    assert packages <= listed
    assert all((ROOT / path).exists() for path in listed)
