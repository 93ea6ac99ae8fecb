"""Helpers shared by make_keras.py, make_flax.py and make_paddle.py (numpy only).

Each of those scripts runs in its own framework's virtual environment (see make.sh) and imports this
module. Nothing here imports a deep-learning framework: onnx and onnxruntime are imported lazily, inside
the functions that check and describe an exported file.

What lives here:
- ``probe_images``: the deterministic probe images every model is evaluated on;
- ``bilinear_upsample``: torch's ``F.interpolate(mode="bilinear", align_corners=False)`` in numpy;
- ``gradcam``: the engine's GradCAM formula, from the source framework's activations and gradients;
- ``check_onnx``: onnxruntime on the exported file must reproduce the framework's own outputs;
- ``check_gradient``: a finite-difference check of the framework's input gradient;
- ``write_model``: writes ``<name>.npz`` and the model's entry of ``manifest.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "manifest.json"
DATE = "2026-12-06"
NUM_PROBES = 20
PROBE_SEED = 20261206
MAX_ONNX_BYTES = 1_000_000  # each file stays under 1 MB
ORT_RTOL = 1e-4  # max |ort - framework| <= ORT_RTOL * max(1, max |logits|)


class CorpusError(RuntimeError):
    """A check failed: the corpus must not be written."""


# ---------------------------------------------------------------------------------------------- probes


def bilinear_upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize [N, C, h, w] to [N, C, H, W] exactly as torch's bilinear ``align_corners=False`` does.

    Source coordinate of output index d: ``(d + 0.5) * in / out - 0.5``, clamped below at 0; the
    lower neighbour is ``floor`` of it, the upper one ``min(lower + 1, in - 1)`` (edge clamped).
    """
    maps = np.asarray(maps)
    if maps.ndim != 4:
        raise ValueError(f"bilinear_upsample wants [N, C, h, w], got {maps.shape}")
    out_h, out_w = size
    dtype = maps.dtype if np.issubdtype(maps.dtype, np.floating) else np.float32

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        scale = n_in / n_out
        src = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
        src = np.maximum(src, 0.0)
        lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        frac = src - lo
        return lo, hi, frac

    h_lo, h_hi, h_f = axis(maps.shape[2], out_h)
    w_lo, w_hi, w_f = axis(maps.shape[3], out_w)
    m = maps.astype(np.float64)
    top = m[:, :, h_lo, :] * (1.0 - h_f)[None, None, :, None] + m[:, :, h_hi, :] * h_f[None, None, :, None]
    out = top[:, :, :, w_lo] * (1.0 - w_f) + top[:, :, :, w_hi] * w_f
    return out.astype(dtype)


def probe_images(
    height: int, width: int, channels: int, layout: str = "NHWC", n: int = NUM_PROBES, seed: int = PROBE_SEED
) -> np.ndarray:
    """``n`` deterministic images, float32 in [0, 1], as [n, H, W, C] ("NHWC") or [n, C, H, W] ("NCHW").

    Each image is a smooth random field (coarse Gaussian noise, bilinearly upsampled) plus structure:
    a bright disc, a dark rectangle and a faint oriented stripe pattern at seeded random places, then
    rescaled to span [0, 1]. The same (height, width, channels, seed) always gives the same images, so
    the NHWC and NCHW probes of one model are transposes of each other.
    """
    rng = np.random.default_rng([seed, height, width, channels])
    yy, xx = np.meshgrid(
        np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij"
    )
    images = np.empty((n, channels, height, width), dtype=np.float64)
    for i in range(n):
        coarse = rng.normal(size=(1, channels, int(rng.integers(3, 7)), int(rng.integers(3, 7))))
        img = bilinear_upsample(coarse, (height, width))[0]
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        radius = rng.uniform(0.12, 0.25) * min(height, width)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2).astype(np.float64)
        y0, x0 = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
        rect = np.zeros((height, width))
        rect[y0 : y0 + int(rng.integers(3, height // 2)), x0 : x0 + int(rng.integers(3, width // 2))] = 1.0
        theta = rng.uniform(0, np.pi)
        stripes = np.sin((np.cos(theta) * xx + np.sin(theta) * yy) * rng.uniform(0.5, 1.5))
        colour = rng.uniform(0.5, 1.5, size=(channels, 1, 1))
        img = img + 2.0 * colour * disc - 1.5 * rect + 0.3 * stripes
        img = (img - img.min()) / (img.max() - img.min())
        images[i] = img
    images = images.astype(np.float32)
    if layout == "NHWC":
        return np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    if layout == "NCHW":
        return images
    raise ValueError(f"layout must be NHWC or NCHW, not {layout!r}")


def to_nchw(array: np.ndarray, layout: str) -> np.ndarray:
    if layout == "NCHW":
        return np.asarray(array)
    if layout == "NHWC":
        return np.ascontiguousarray(np.asarray(array).transpose(0, 3, 1, 2))
    raise ValueError(f"layout must be NHWC or NCHW, not {layout!r}")


# --------------------------------------------------------------------------------------------- GradCAM


def gradcam(activations: np.ndarray, gradients: np.ndarray, layout: str, size: tuple[int, int]) -> np.ndarray:
    """The engine's GradCAM from the source framework's activations A and gradients dA.

    A and dA in ``layout`` (NHWC or NCHW) are put in [N, C, h, w]; weights = mean of dA over (h, w)
    per channel; cam = relu(sum_c weights_c * A_c) -> [N, 1, h, w]; upsampled to ``size`` (the input's
    H x W) bilinearly (torch, align_corners=False); each map divided by its max (all zero when the max
    is <= 0). Returns float32 [N, H, W].
    """
    a = to_nchw(activations, layout).astype(np.float64)
    g = to_nchw(gradients, layout).astype(np.float64)
    if a.shape != g.shape:
        raise CorpusError(f"gradcam: activations {a.shape} and gradients {g.shape} differ")
    weights = g.mean(axis=(2, 3), keepdims=True)
    cam = np.maximum((weights * a).sum(axis=1, keepdims=True), 0.0)
    cam = bilinear_upsample(cam, size)[:, 0]
    peak = cam.reshape(cam.shape[0], -1).max(axis=1)
    out = np.zeros_like(cam)
    positive = peak > 0
    out[positive] = cam[positive] / peak[positive, None, None]
    return out.astype(np.float32)


# ------------------------------------------------------------------------------------------ the checks


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def check_onnx(path: Path, x: np.ndarray, expected: np.ndarray, logits: np.ndarray) -> dict:
    """Run ``path`` with onnxruntime on ``x``; its (first) output must match the framework's ``expected``.

    Tolerance: max abs diff <= ORT_RTOL * max(1, max |logits|). Raises CorpusError otherwise. Returns the
    ONNX facts the manifest records (input name and shape, opset, the max abs diff).
    """
    import onnx
    import onnxruntime as ort

    size = os.path.getsize(path)
    if size >= MAX_ONNX_BYTES:
        raise CorpusError(f"{path.name} is {size} bytes, over the 1 MB limit")
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    graph_inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(graph_inputs) != 1:
        raise CorpusError(f"{path.name}: expected one graph input, got {[i.name for i in graph_inputs]}")
    inp = graph_inputs[0]
    shape = [
        d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else None)
        for d in inp.type.tensor_type.shape.dim
    ]
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {inp.name: np.ascontiguousarray(x, dtype=np.float32)})[0]
    if got.shape != expected.shape:
        raise CorpusError(f"{path.name}: onnxruntime output {got.shape}, framework {expected.shape}")
    diff = float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64))))
    tolerance = ORT_RTOL * max(1.0, float(np.max(np.abs(logits))))
    if not np.isfinite(diff) or diff > tolerance:
        raise CorpusError(
            f"{path.name}: onnxruntime differs from the framework by {diff:.3g} (tolerance {tolerance:.3g})"
        )
    print(
        f"  {path.name}: {size} bytes, opset {opset}, input {inp.name} {shape}, ort max abs diff {diff:.3g}"
    )
    return {
        "input_name": inp.name,
        "input_shape": shape,
        "opset": opset,
        "ort_max_abs_diff": diff,
        "onnx_bytes": size,
        "output_name": model.graph.output[0].name,
    }


def onnx_nodes_containing(path: Path, text: str) -> list[dict]:
    """The nodes of ``path`` whose name contains ``text`` (how the exporter spelled the layer)."""
    import onnx

    model = onnx.load(str(path))
    return [{"name": n.name, "op_type": n.op_type} for n in model.graph.node if text and text in n.name]


def check_gradient(
    logits_fn: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    target: np.ndarray,
    gradient: np.ndarray,
    directions: int = 3,
    eps: float = 1e-4,
    seed: int = 0,
) -> float:
    """Central differences of the framework's pre-softmax logit of ``target`` along random directions.

    ``logits_fn`` maps a float32 batch (layout of ``x``) to pre-softmax logits. Compares, per image,
    (f(x + eps v) - f(x - eps v)) / 2 eps with <gradient, v>; the worst relative error (against the norm
    of the gradient times the norm of v) must stay under 2%. Returns it.
    """
    rng = np.random.default_rng(seed)
    rows = np.arange(x.shape[0])
    worst = 0.0
    for _ in range(directions):
        v = rng.normal(size=x.shape).astype(np.float32)
        plus = np.asarray(logits_fn((x + eps * v).astype(np.float32)), dtype=np.float64)[rows, target]
        minus = np.asarray(logits_fn((x - eps * v).astype(np.float32)), dtype=np.float64)[rows, target]
        numeric = (plus - minus) / (2 * eps)
        analytic = (gradient.astype(np.float64) * v).reshape(x.shape[0], -1).sum(axis=1)
        scale = (
            np.linalg.norm(gradient.reshape(x.shape[0], -1), axis=1)
            * np.linalg.norm(v.reshape(x.shape[0], -1), axis=1)
        ) + 1e-12
        worst = max(worst, float(np.max(np.abs(numeric - analytic) / scale)))
    if worst > 0.02:
        raise CorpusError(f"input gradient disagrees with finite differences (relative error {worst:.3g})")
    return worst


# --------------------------------------------------------------------------------------------- writing


def write_model(
    name: str,
    *,
    x: np.ndarray,
    logits: np.ndarray,
    probabilities: np.ndarray,
    gradient: np.ndarray,
    gradcam_maps: np.ndarray,
    entry: dict,
) -> None:
    """Write ``<name>.npz`` and put ``entry`` (plus derived fields) in ``manifest.json`` under ``name``."""
    logits = np.asarray(logits, dtype=np.float32)
    target = np.argmax(logits, axis=1).astype(np.int64)
    layout = entry["input_layout"]
    x = np.asarray(x, dtype=np.float32)
    n = x.shape[0]
    height, width = (x.shape[1], x.shape[2]) if layout == "NHWC" else (x.shape[2], x.shape[3])
    checks = {
        "x in [0, 1]": float(x.min()) >= 0.0 and float(x.max()) <= 1.0,
        "logits [N, 10]": logits.shape == (n, 10),
        "probabilities [N, 10]": np.shape(probabilities) == (n, 10),
        "gradient like x": np.shape(gradient) == x.shape,
        "gradcam [N, H, W]": np.shape(gradcam_maps) == (n, height, width),
        "finite": all(np.all(np.isfinite(a)) for a in (logits, probabilities, gradient, gradcam_maps)),
    }
    if entry["ends_with_softmax"]:
        checks["probabilities = softmax(logits)"] = bool(
            np.max(np.abs(softmax(logits) - probabilities)) < 1e-5
        )
    else:
        checks["probabilities = logits"] = bool(np.max(np.abs(np.asarray(probabilities) - logits)) < 1e-6)
    failed = [k for k, ok in checks.items() if not ok]
    if failed:
        raise CorpusError(f"{name}: failed checks {failed}")
    np.savez(
        HERE / f"{name}.npz",
        x=x,
        logits=logits,
        probabilities=np.asarray(probabilities, dtype=np.float32),
        target=target,
        gradient=np.asarray(gradient, dtype=np.float32),
        gradcam=np.asarray(gradcam_maps, dtype=np.float32),
    )
    zero_maps = int(np.sum(np.asarray(gradcam_maps).reshape(n, -1).max(axis=1) <= 0))
    full = {
        "file": f"{name}.onnx",
        "arrays": f"{name}.npz",
        **entry,
        "num_probes": n,
        "probe_seed": PROBE_SEED,
        "targets": target.tolist(),
        "gradcam_all_zero_maps": zero_maps,
        "date": DATE,
    }
    manifest = {"date": DATE, "models": {}}
    if MANIFEST.exists():
        manifest = json.loads(MANIFEST.read_text())
    manifest["date"] = DATE
    manifest["models"][name] = full
    manifest["models"] = dict(sorted(manifest["models"].items()))
    MANIFEST.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    print(f"  {name}.npz written; targets {target.tolist()}; all-zero GradCAM maps: {zero_maps}")


def versions(*packages: str) -> dict[str, str]:
    """Installed versions of ``packages`` (distribution names)."""
    from importlib.metadata import version

    return {p: version(p) for p in packages}
