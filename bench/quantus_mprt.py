"""Benchmarks 1 and 3: this engine against Quantus 0.6 MPRT on the matched LeNet work (bench/matched.py),
or on the same work for a ResNet-18-like model at 112 x 112.

    python -m bench.quantus_mprt ../shared/data/mnist-lenet [--rounds 3] [--venv bench/.venv-quantus]
    python -m bench.quantus_mprt --model resnet18-112 [--rounds 2]

The ResNet is bench/scale.py's (random weights, BatchNorm statistics per layer, 10 classes) with 16 of its
seeded blob images, written to a temporary folder; Quantus's side loads the same ONNX weights into its
own ResNet-18, and the engine takes one layer per stage (``stages`` layers: 21 after BatchNorm folding),
as Quantus does; the rest of the settings are the LeNet's.

Quantus runs in its own virtualenv (created on first use: torch==2.13.0, quantus==0.6.0, captum, onnx),
never in the project's. Rounds alternate: Quantus's three MPRT calls (Saliency, IntegratedGradients,
InputXGradient; timed inside its process, imports excluded), then the engine's audit of the same work
(four metrics, cross-image floors, calibration, intervals, archive; timed in-process after a warm-up).
Prints the times, the ratio, and both sides' mean Spearman of absolute maps per layer; writes
bench/quantus_mprt.json (the LeNet) or bench/quantus_mprt_resnet18.json.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

from bench.matched import SETTINGS, engine_audit, machine, timed
from bench.scale import write_inputs
from bench.tables import markdown_table
from workers.core.audit_settings import Metric, StageUnit
from workers.core.report import AuditReport

HERE = Path(__file__).parent
QUANTUS_PACKAGES = ["torch==2.13.0", "quantus==0.6.0", "captum", "onnx"]
RESNET_SIZE, RESNET_IMAGES = 112, 16
RESNET_SETTINGS = SETTINGS.model_copy(update={"stages": StageUnit.layers})


def quantus_python(folder: Path) -> Path:
    python = folder / "bin" / "python"
    if not python.exists():
        venv.create(folder, with_pip=True)
        subprocess.run([python, "-m", "pip", "install", "--quiet", *QUANTUS_PACKAGES], check=True)
    return python


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path, nargs="?", help="folder with lenet_mnist.onnx and probes.npz")
    parser.add_argument("--model", choices=["lenet", "resnet18-112"], default="lenet")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--venv", type=Path, default=HERE / ".venv-quantus")
    args = parser.parse_args()
    if args.model == "lenet" and args.data is None:
        parser.error("the LeNet needs its data folder")
    python = quantus_python(args.venv)
    out = Path(tempfile.mkdtemp())
    if args.model == "lenet":
        data, settings, onnx_name, json_name = args.data, SETTINGS, "lenet_mnist.onnx", "quantus_mprt.json"
    else:
        data, settings, json_name = Path(tempfile.mkdtemp()), RESNET_SETTINGS, "quantus_mprt_resnet18.json"
        onnx_name = write_inputs(data, (2, 2, 2, 2), RESNET_IMAGES, RESNET_SIZE)[0].name

    def audit() -> AuditReport:
        return engine_audit(data, out, settings, onnx_name)

    report = audit()  # warm-up: imports, first-call allocations
    rounds = []
    for _ in range(args.rounds):
        quantus = subprocess.run(
            [python, HERE / "quantus_side.py", data, "1", args.model],
            check=True,
            capture_output=True,
            text=True,
        )
        quantus_round = json.loads(quantus.stdout.strip().splitlines()[-1])
        engine_seconds = timed(audit)
        load = os.getloadavg()[0]  # other jobs on the same cores show here
        rounds.append({"quantus": quantus_round["seconds"], "engine": engine_seconds, "load_1min": load})
    cascading = {m.name: next(t for t in m.tests if t.test.value == "cascading") for m in report.methods}
    ours = {
        name: {stage.label: stage.similarity[Metric.spearman_abs].mean for stage in test.stages}
        for name, test in cascading.items()
    }
    walked = [label.removesuffix(" and above") for label in ours["gradient"]][1:]
    if walked != list(quantus_round["layers"]["gradient"])[1:]:
        raise SystemExit(f"the two sides walked different layers: {walked}, {quantus_round['layers']}")
    print(f"machine: {machine()}\n")
    rows = [
        [
            index,
            f"{r['quantus']:.2f}",
            f"{r['engine']:.2f}",
            f"{r['quantus'] / r['engine']:.2f}x",
            f"{r['load_1min']:.2f}",
        ]
        for index, r in enumerate(rounds, start=1)
    ]
    header = ["round", "Quantus MPRT (s)", "engine (s)", "engine speed-up", "load (1 min) after"]
    print(markdown_table(header, rows))
    print("\nmean |Spearman| of absolute maps per stage (Quantus's draw / the engine's draw 0):\n")
    similarity_rows = [
        [name, *(f"{q:.3f} / {e:.3f}" for q, e in zip(layers.values(), ours[name].values(), strict=True))]
        for name, layers in quantus_round["layers"].items()
    ]
    print(markdown_table(["method", *quantus_round["layers"]["gradient"]], similarity_rows))
    print(f"\nover the {len(walked)} randomized stages (Quantus / engine; largest gap at one stage):")
    for name, layers in quantus_round["layers"].items():
        q, e = list(layers.values())[1:], list(ours[name].values())[1:]
        gap = max(abs(a - b) for a, b in zip(q, e, strict=True))
        print(f"{name}: mean {sum(q) / len(q):.3f} / {sum(e) / len(e):.3f}, largest gap {gap:.3f}")
    result = {
        "model": args.model,
        "settings": settings.model_dump(mode="json", exclude_defaults=True),
        "machine": machine(),
        "rounds": rounds,
        "quantus_layers": quantus_round["layers"],
        "engine_layers": ours,
    }
    (HERE / json_name).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
