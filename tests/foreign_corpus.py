"""The corpus of classifiers exported from other frameworks (tests/foreign_models) and how its stored
references are compared with the engine's maps; shared by the tests and bench/foreign_exports.py."""

import json
import zipfile
from pathlib import Path

import numpy as np

CORPUS = Path(__file__).parent / "foreign_models"
MANIFEST: dict[str, dict] = json.loads((CORPUS / "manifest.json").read_text())["models"]
# The GradCAM layer as the graph names it, where the file does not hold the practitioner's name: paddle2onnx
# keeps parameter names (bn3 is folded into its conv, conv2d_2), jax2onnx keeps no module paths.
GRAPH_NAMES = {"paddle_mobilenet_like": "conv2d_2", "flax_cnn": "node_Relu_10"}


def stored(name: str) -> dict[str, np.ndarray]:
    """The framework's own arrays for model ``name``: x, logits, target, gradient, gradcam..."""
    with np.load(CORPUS / MANIFEST[name]["arrays"]) as arrays:
        return dict(arrays)


def probes_file(name: str, folder: Path) -> Path:
    """The stored probes as a user of that framework would send them: in the model's own layout."""
    path = folder / f"{name}-probes.npz"
    np.savez(path, x=stored(name)["x"])
    return path


def gradcam_layer(name: str) -> str:
    return GRAPH_NAMES.get(name, MANIFEST[name]["gradcam_layer"])


def channels_first(array: np.ndarray, layout: str) -> np.ndarray:
    return array.transpose(0, 3, 1, 2) if layout == "NHWC" else array


def trained_map(out: Path, method: str) -> np.ndarray:
    """The trained model's maps of ``method`` from an audit's archive."""
    with zipfile.ZipFile(out / "maps.zip") as archive, archive.open(f"maps/{method}/trained.npy") as file:
        return np.load(file)


def relative_errors(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """Per image: the largest difference, relative to the framework's largest value."""
    scale = np.abs(theirs).reshape(len(theirs), -1).max(axis=1)
    error = np.abs(ours - theirs).reshape(len(theirs), -1).max(axis=1)
    return error / np.maximum(scale, 1e-12)


def matching(ours: np.ndarray, theirs: np.ndarray, rtol: float) -> float:
    """Share of images whose map is within ``rtol`` of the framework's largest value, everywhere."""
    return float((relative_errors(ours, theirs) <= rtol).mean())
