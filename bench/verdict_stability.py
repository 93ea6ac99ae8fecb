"""Benchmark: do verdicts hold across seeds? The full audit for seeds 0-4, one outcome table.

    python -m bench.verdict_stability digits [--data]          the tests' 'same'-padded digits CNN
    python -m bench.verdict_stability lenet PATH/mnist-lenet   the shared MNIST LeNet (ONNX)

Default settings (3 draws, more where undecided; IG 50 steps, 50 noise samples); ``--data`` adds the
data randomization test, with the engine training 3 random-label twins and 3 true-label controls per seed
(more where undecided) on ``--train-images`` of the 1,500 training images. Prints a markdown table
(method x test -> outcome and judged mean, per seed) and the wall time of each audit, and writes both as
JSON to ``--out``. Results are written down in bench/RESULTS.md.
"""

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from workers.core.audit_settings import AuditSettings
from workers.core.report import AuditReport
from workers.engine.audit import run_audit
from workers.engine.training_twins import DataTestInputs

SEEDS = range(5)


def _digits_inputs(folder: Path, train_images: int) -> tuple[Path, Path, Path]:
    from tests.digits import digits_data, export_onnx, train_digits_cnn

    data = digits_data()
    export_onnx(train_digits_cnn(data), folder / "model.onnx", dynamo=False)
    np.savez(folder / "probes.npz", x=data.x_test[:48], y=data.y_test[:48])
    np.savez(folder / "train.npz", x=data.x_train[:train_images], y=data.y_train[:train_images])
    return folder / "model.onnx", folder / "probes.npz", folder / "train.npz"


def _cells(report: AuditReport) -> dict[str, str]:
    cells = {}
    for method in report.methods:
        for result in method.tests:
            verdict = result.verdict
            key = f"{method.name} | {result.test.value}"
            cells[key] = (
                "baseline" if verdict is None else f"{verdict.outcome.value} ({verdict.estimate.mean:.2f})"
            )
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", choices=["digits", "lenet"])
    parser.add_argument(
        "path", type=Path, nargs="?", help="lenet: the folder of lenet_mnist.onnx, probes.npz"
    )
    parser.add_argument("--data", action="store_true", help="digits: add the data randomization test")
    parser.add_argument(
        "--train-images", type=int, default=1500, help="digits: training images for the twins (default 1500)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-stability"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        if args.model == "digits":
            model, probes, train = _digits_inputs(Path(folder), args.train_images)
        else:
            model, probes, train = args.path / "lenet_mnist.onnx", args.path / "probes.npz", None
        data = DataTestInputs(training_data=train) if args.data and train is not None else None
        tests = ["cascading", "independent", "data"] if data is not None else ["cascading", "independent"]
        rows: dict[str, list[str]] = {}
        seconds = []
        for seed in SEEDS:
            started = time.perf_counter()
            settings = AuditSettings(seed=seed, tests=tests, device=args.device)
            report = run_audit(model, probes, settings, args.out / f"seed-{seed}", data_inputs=data)
            seconds.append(time.perf_counter() - started)
            for key, cell in _cells(report).items():
                rows.setdefault(key, []).append(cell)
    print(
        f"- machine: {platform.machine()}, {torch.get_num_threads()} threads, device {report.device}, "
        f"torch {report.versions.torch}; {settings.draws} draws"
    )
    print("- wall time per audit (s): " + ", ".join(f"{s:.1f}" for s in seconds))
    print("\n| method | test | " + " | ".join(f"seed {s}" for s in SEEDS) + " |")
    print("|---|---|" + "---|" * len(SEEDS))
    for key, cells in rows.items():
        print(f"| {key} | " + " | ".join(cells) + " |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stability.json").write_text(json.dumps({"seconds": seconds, "outcomes": rows}, indent=2))


if __name__ == "__main__":
    main()
