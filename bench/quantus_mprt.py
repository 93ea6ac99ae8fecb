"""Benchmark 1: this engine against Quantus 0.6 MPRT on the matched LeNet work (bench/matched.py).

    python -m bench.quantus_mprt ../shared/data/mnist-lenet [--rounds 3] [--venv bench/.venv-quantus]

Quantus runs in its own virtualenv (created on first use: torch==2.13.0, quantus==0.6.0, captum, onnx),
never in the project's. Rounds alternate: Quantus's three MPRT calls (Saliency, IntegratedGradients,
InputXGradient; timed inside its process, imports excluded), then the engine's audit of the same work
(four metrics, cross-image floors, calibration, intervals, archive; timed in-process after a warm-up).
Prints the times, the ratio, and both sides' mean Spearman of absolute maps per layer; writes
bench/quantus_mprt.json.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

from bench.matched import engine_audit, machine, timed
from bench.tables import markdown_table
from workers.engine.settings import Metric

HERE = Path(__file__).parent
QUANTUS_PACKAGES = ["torch==2.13.0", "quantus==0.6.0", "captum", "onnx"]


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
    parser.add_argument("data", type=Path, help="folder with lenet_mnist.onnx and probes.npz")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--venv", type=Path, default=HERE / ".venv-quantus")
    args = parser.parse_args()
    python = quantus_python(args.venv)
    out = Path(tempfile.mkdtemp())
    report = engine_audit(args.data, out)  # warm-up: imports, first-call allocations
    rounds = []
    for _ in range(args.rounds):
        quantus = subprocess.run(
            [python, HERE / "quantus_side.py", args.data, "1"], check=True, capture_output=True, text=True
        )
        quantus_round = json.loads(quantus.stdout.strip().splitlines()[-1])
        engine_seconds = timed(lambda: engine_audit(args.data, out))
        rounds.append({"quantus": quantus_round["seconds"], "engine": engine_seconds})
    cascading = {m.name: next(t for t in m.tests if t.test.value == "cascading") for m in report.methods}
    ours = {
        name: {stage.label: stage.similarity[Metric.spearman_abs].mean for stage in test.stages}
        for name, test in cascading.items()
    }
    print(f"machine: {machine()}\n")
    rows = [
        [index, f"{r['quantus']:.2f}", f"{r['engine']:.2f}", f"{r['quantus'] / r['engine']:.2f}x"]
        for index, r in enumerate(rounds, start=1)
    ]
    print(markdown_table(["round", "Quantus MPRT (s)", "engine (s)", "engine speed-up"], rows))
    print("\nmean |Spearman| of absolute maps per stage (Quantus's draw / the engine's draw 0):\n")
    similarity_rows = [
        [name, *(f"{q:.3f} / {e:.3f}" for q, e in zip(layers.values(), ours[name].values(), strict=True))]
        for name, layers in quantus_round["layers"].items()
    ]
    print(markdown_table(["method", *quantus_round["layers"]["gradient"]], similarity_rows))
    result = {
        "machine": machine(),
        "rounds": rounds,
        "quantus_layers": quantus_round["layers"],
        "engine_layers": ours,
    }
    (HERE / "quantus_mprt.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
