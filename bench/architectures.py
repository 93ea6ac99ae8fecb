"""Architectures x file formats: audited or refused (why), layers, GradCAM layer, seconds.

Each small model of tests/architectures.py (the blocks of ResNet, MobileNetV3, EfficientNet, DenseNet,
Inception, ConvNeXt and ViT, random weights, 32x32 inputs) is exported in the four formats and audited
with the default methods and both parameter tests; where the guard finds a nonlinearity other than ReLU,
the audit skips the guided methods itself. Prints a markdown table and writes JSON.

    python bench/architectures.py [--images 16] [--json bench/architectures.json]
"""

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.architectures import ARCHITECTURES, FORMATS, IMAGE_SIZE, export, random_weights
from workers.core.audit_settings import AuditSettings
from workers.core.errors import AuditInputError
from workers.engine.audit import run_audit


def _audit(model_file: Path, probes: Path, out: Path) -> dict[str, object]:
    started = time.perf_counter()
    try:
        report = run_audit(model_file, probes, AuditSettings(), out)
    except AuditInputError as error:
        return {"result": f"refused: {str(error)[:160]}", "seconds": round(time.perf_counter() - started, 1)}
    reasons = [m.reason for m in report.skipped_methods[:1]]
    refused = "; ".join(r.split("other than ReLU (", 1)[-1].split("); guided", 1)[0] for r in reasons)
    gradcam = next(m for m in report.methods if m.name == "gradcam")
    return {
        "result": "audited" + (f"; guided skipped ({refused})" if refused else ""),
        "layers": len(report.layers),
        "layer_names": [layer.name for layer in report.layers],
        "gradcam_layer": gradcam.parameters["layer"],
        "conversion_diff": report.conversion.max_abs_logit_diff,
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--json", type=Path, default=Path("bench/architectures.json"))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        x = np.random.default_rng(0).random((args.images, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
        np.save(root / "probes.npy", x)
        for architecture in ARCHITECTURES:
            model = random_weights(architecture)
            for fmt in FORMATS:
                model_file = export(model, fmt, root, torch.from_numpy(x[:2]))
                row = {"architecture": architecture.name, "format": fmt}
                row |= _audit(model_file, root / "probes.npy", root / f"out-{architecture.name}-{fmt}")
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "layer_names"}), file=sys.stderr)
    print("| architecture | format | result | layers | GradCAM layer | seconds |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['architecture']} | {row['format']} | {row['result']} | {row.get('layers', '-')} | "
            f"{row.get('gradcam_layer', '-')} | {row['seconds']} |"
        )
    args.json.write_text(json.dumps({"machine": _machine(), "images": args.images, "rows": rows}, indent=1))


def _machine() -> str:
    import os
    import platform

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


if __name__ == "__main__":
    main()
