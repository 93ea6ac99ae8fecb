"""Check the committed corpus against itself with numpy, onnx and onnxruntime only (no framework needed).

    python tests/foreign_models/verify.py      # e.g. with the project's own venv

For every manifest entry: the file exists and is under 1 MB, its input name/shape/opset are the manifest's,
onnxruntime on ``x`` reproduces ``probabilities``, ``target`` is the argmax of ``logits``, the arrays have
the documented shapes and dtypes, and, for models whose ONNX output is the logits, the stored framework
gradient agrees with central differences of the ONNX model along random directions.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

HERE = Path(__file__).resolve().parent


def main() -> int:
    manifest = json.loads((HERE / "manifest.json").read_text())
    problems: list[str] = []
    for name, entry in manifest["models"].items():
        path = HERE / entry["file"]
        data = np.load(HERE / entry["arrays"])
        x, logits, probabilities = data["x"], data["logits"], data["probabilities"]
        target, gradient, cam = data["target"], data["gradient"], data["gradcam"]
        model = onnx.load(str(path))
        inp = model.graph.input[0]
        shape = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
        layout = entry["input_layout"]
        h, w = (x.shape[1], x.shape[2]) if layout == "NHWC" else (x.shape[2], x.shape[3])
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = session.run(None, {inp.name: x})[0]
        diff = float(np.abs(out - probabilities).max())
        checks = {
            "size < 1 MB": path.stat().st_size < 1_000_000,
            "input name": inp.name == entry["input_name"],
            "input shape": shape == entry["input_shape"],
            "dtypes": (x.dtype, logits.dtype, probabilities.dtype, target.dtype, gradient.dtype, cam.dtype)
            == (np.float32,) * 3 + (np.int64,) + (np.float32,) * 2,
            "shapes": logits.shape == (8, 10) and gradient.shape == x.shape and cam.shape == (8, h, w),
            "x in [0, 1]": x.min() >= 0 and x.max() <= 1,
            "target = argmax(logits)": np.array_equal(target, logits.argmax(1)),
            "gradcam in [0, 1]": cam.min() >= 0 and cam.max() <= 1,
            "ort reproduces probabilities": diff <= 1e-4 * max(1.0, float(np.abs(logits).max())),
        }
        if not entry["ends_with_softmax"]:
            rng = np.random.default_rng(1)
            rows = np.arange(x.shape[0])
            worst = 0.0
            for _ in range(3):
                v = rng.normal(size=x.shape).astype(np.float32)
                eps = 1e-3
                plus = session.run(None, {inp.name: x + eps * v})[0][rows, target].astype(np.float64)
                minus = session.run(None, {inp.name: x - eps * v})[0][rows, target].astype(np.float64)
                numeric = (plus - minus) / (2 * eps)
                analytic = (gradient.astype(np.float64) * v).reshape(8, -1).sum(1)
                scale = np.linalg.norm(gradient.reshape(8, -1), axis=1) * np.linalg.norm(
                    v.reshape(8, -1), axis=1
                )
                worst = max(worst, float(np.max(np.abs(numeric - analytic) / scale)))
            checks["gradient vs ONNX finite differences"] = worst < 0.05
        failed = [k for k, ok in checks.items() if not ok]
        status = "ok" if not failed else f"FAILED {failed}"
        print(f"{name:28s} {entry['input_name']} {shape} ort diff {diff:.2g}: {status}")
        problems += [f"{name}: {k}" for k in failed]
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
