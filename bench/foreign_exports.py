"""Framework x model x layout: audited or refused, layers, GradCAM layer, agreement with the framework.

Every classifier of the foreign-export corpus (tests/foreign_models: Keras 3 by tf2onnx, Flax by jax2onnx,
PaddlePaddle by paddle2onnx) is audited with the default methods as a user would send it (probes in the
model's own layout, no option), and its trained maps are held to the source framework's own input
gradients and GradCAM. Prints a markdown table and writes JSON.

    python bench/foreign_exports.py [--draws 1] [--json bench/foreign_exports.json]
"""

import argparse
import json
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.tables import markdown_table
from tests.foreign_corpus import (
    CORPUS,
    MANIFEST,
    channels_first,
    probes_file,
    relative_errors,
    stored,
    trained_map,
)
from workers.core.audit_settings import AuditSettings, RandomizationTest
from workers.core.errors import AuditInputError
from workers.engine.audit import run_audit

RTOL = 1e-4


def _audit(name: str, settings: AuditSettings, folder: Path) -> dict[str, object]:
    entry, arrays, out = MANIFEST[name], stored(name), folder / name
    started = time.perf_counter()
    try:
        report = run_audit(CORPUS / entry["file"], probes_file(name, folder), settings, out)
    except AuditInputError as error:
        return {"result": f"refused: {str(error)[:160]}", "seconds": round(time.perf_counter() - started, 1)}
    gradient = relative_errors(
        trained_map(out, "gradient"), channels_first(arrays["gradient"], entry["input_layout"])
    )
    cam = relative_errors(trained_map(out, "gradcam")[:, 0], arrays["gradcam"])
    gradcam = next(m for m in report.methods if m.name == "gradcam")
    skipped = ", ".join(m.name for m in report.skipped_methods)
    return {
        "result": "audited" + (f"; skipped {skipped}" if skipped else ""),
        "layout": report.model.input_layout,
        "layers": [layer.name for layer in report.layers],
        "gradcam_layer": gradcam.parameters["layer"],
        "gradient_within": f"{int((gradient <= RTOL).sum())}/{len(gradient)}",
        "gradient_median_error": float(np.median(gradient)),
        "gradcam_within": f"{int((cam <= RTOL).sum())}/{len(cam)}",
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=1)
    parser.add_argument("--json", type=Path, default=Path("bench/foreign_exports.json"))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    settings = AuditSettings(
        tests=[RandomizationTest.cascading, RandomizationTest.independent],
        draws=args.draws,
        max_draws=args.draws,
        ig_steps=16,
        noise_samples=16,
    )
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in MANIFEST:
            rows[name] = _audit(name, settings, Path(folder))
            print(json.dumps({name: rows[name]}), file=sys.stderr)
    table = [
        [
            MANIFEST[name]["framework"],
            name,
            row.get("layout", "-"),
            row["result"],
            _layers(row),
            row.get("gradcam_layer", "-"),
            f"{row.get('gradient_within', '-')} (median {row.get('gradient_median_error', 0):.1e})",
            row.get("gradcam_within", "-"),
            row["seconds"],
        ]
        for name, row in rows.items()
    ]
    header = ["framework", "model", "layout", "result", "layers", "GradCAM layer", "gradient <= 1e-4"]
    print(markdown_table([*header, "GradCAM <= 1e-4", "seconds"], table))
    machine = f"{platform.processor() or platform.machine()}, torch {torch.__version__}"
    args.json.write_text(json.dumps({"machine": machine, "settings": settings.model_dump(), "rows": rows}))


def _layers(row: dict[str, object]) -> str:
    layers = row.get("layers")
    return f"{len(layers)}: {layers[0]} … {layers[-1]}" if isinstance(layers, list) else "-"


if __name__ == "__main__":
    main()
