"""A newcomer's mistakes get one line that says what to change, before the engine (torch) is loaded."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from workers.core.audit_settings import METHOD_NAMES
from workers.core.errors import ProbeError
from workers.core.probes import inspect_probe_file

CLI = str(Path(sys.executable).parent / "saliency-audit")


def _main_in_a_fresh_process(*args: str) -> tuple[int, str, bool]:
    """Exit code, stderr, and whether torch was imported on the way."""
    code = (
        "import sys; from workers.cli.main import main; code = main(sys.argv[1:]); "
        "print('torch' in sys.modules); sys.exit(code)"
    )
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    return done.returncode, done.stderr, done.stdout.strip().endswith("True")


def test_a_missing_file_is_named_in_one_line_before_torch_is_loaded(tmp_path: Path) -> None:
    code, err, torch_loaded = _main_in_a_fresh_process("run", str(tmp_path / "model.onnx"), "probes.npz")
    assert code == 2 and not torch_loaded
    missing = tmp_path / "model.onnx"
    assert err.strip().splitlines() == [f"saliency-audit: error: model {missing} does not exist"]


def test_an_unknown_method_is_named_in_one_line_without_library_links(tmp_path: Path) -> None:
    model, probes = tmp_path / "m.onnx", tmp_path / "p.npy"
    model.write_bytes(b"x")
    np.save(probes, np.zeros((2, 1, 8, 8), np.float32))
    code, err, torch_loaded = _main_in_a_fresh_process("run", str(model), str(probes), "--methods", "lime")
    assert code == 2 and not torch_loaded
    assert len(err.strip().splitlines()) == 1 and "unknown saliency method 'lime'" in err
    assert "pydantic" not in err


def test_a_mistyped_option_shows_the_commands_own_usage() -> None:
    done = subprocess.run([CLI, "run", "a", "b", "--methdos", "x"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "usage: saliency-audit run" in done.stderr and "unrecognized arguments: --methdos x" in done.stderr


def test_version_and_methods_with_what_each_is() -> None:
    version = subprocess.run([CLI, "--version"], capture_output=True, text=True, check=True).stdout
    assert version.startswith("saliency-audit ")
    listed = subprocess.run([CLI, "methods"], capture_output=True, text=True, check=True).stdout.splitlines()
    assert [line.split()[0] for line in listed] == list(METHOD_NAMES)
    assert all(len(line.split()) > 2 for line in listed)


def test_a_probe_set_of_no_images_is_refused_at_upload(tmp_path: Path) -> None:
    empty = tmp_path / "empty.npy"
    np.save(empty, np.zeros((0, 1, 8, 8), np.float32))
    with pytest.raises(ProbeError, match="0 probe image"):
        inspect_probe_file(empty, 100, 10**9)
