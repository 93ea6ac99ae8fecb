"""Benchmark: the full default audit of the shared MNIST LeNet, timed, with the paper's table.

    python bench/lenet_audit.py ../shared/data/mnist-lenet [--device cuda] [--out /tmp/bench-lenet]

Prints markdown: wall time, seconds per method, and the per-stage mean |Spearman| of the absolute maps
(cascading) for the methods the paper's MNIST figure shows. Results are written down in bench/RESULTS.md.
"""

import argparse
import platform
import time
from pathlib import Path

import torch

from workers.core.audit_settings import AuditSettings, Metric
from workers.engine.audit import run_audit

TABLE_METHODS = ("gradient", "guided_backprop", "integrated_gradients", "gradcam")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path, help="folder holding lenet_mnist.onnx and probes.npz")
    parser.add_argument("--model", default="lenet_mnist.onnx")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-lenet"))
    args = parser.parse_args()

    started = time.perf_counter()
    report = run_audit(
        args.data / args.model, args.data / "probes.npz", AuditSettings(device=args.device), args.out
    )
    wall = time.perf_counter() - started

    print(
        f"- machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"device {report.device}, torch {report.versions.torch}"
    )
    print(f"- wall time (load, verify, 9 methods x 2 tests, archive): {wall:.1f} s")
    print("- seconds per method: " + ", ".join(f"{m.name} {m.seconds:.1f}" for m in report.methods))
    names = ["trained"] + [f"{layer.name}" for layer in reversed(report.layers)]
    print("\n| method | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for method in report.methods:
        if method.name in TABLE_METHODS:
            cascading = next(t for t in method.tests if t.test.value == "cascading")
            cells = [f"{s.similarity[Metric.spearman_abs].mean:.3f}" for s in cascading.stages]
            print(f"| {method.name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
