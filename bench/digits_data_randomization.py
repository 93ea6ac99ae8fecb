"""Benchmark: the data randomization test on the digits CNN of the tests (scikit-learn's digits).

    python -m bench.digits_data_randomization [--out /tmp/bench-data]   (from the repository root)

Trains the CNN, exports it to ONNX, then lets the engine train the random-label twins and the true-label
controls (3 of each by default) on the same 1,500 training images and compare maps on 48 held-out probes.
Prints markdown: training time and accuracies of each model, and mean |Spearman| of absolute maps per
method (twins vs the retrain floor) with the outcome. Results are written down in bench/RESULTS.md.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from tests.digits import digits_data, export_onnx, train_digits_cnn
from workers.core.audit_settings import AuditSettings, Metric
from workers.engine.audit import run_audit
from workers.engine.training_twins import DataTestInputs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-data"))
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        files = Path(folder)
        data = digits_data()
        export_onnx(train_digits_cnn(data), files / "model.onnx", dynamo=True)
        np.savez(files / "probes.npz", x=data.x_test[:48], y=data.y_test[:48])
        np.savez(files / "train.npz", x=data.x_train, y=data.y_train)
        started = time.perf_counter()
        report = run_audit(
            files / "model.onnx",
            files / "probes.npz",
            AuditSettings(tests=["data"], device=args.device),
            args.out,
            data_inputs=DataTestInputs(training_data=files / "train.npz"),
        )
    print(f"- device {report.device}, wall time {time.perf_counter() - started:.1f} s")
    for run in report.data_randomization.training:
        print(
            f"- {run.role} {run.index}: {run.epochs} epochs in {run.seconds:.1f} s, "
            f"train accuracy {run.train_accuracy:.3f}, held-out accuracy {run.heldout_accuracy:.3f} "
            f"(most frequent class {run.chance_accuracy:.3f})"
        )
    print("\n| method | twins | retrain floor | cross-image | outcome |\n|---|---|---|---|---|")
    for method in report.methods:
        (result,) = method.tests
        twins = result.stages[-1]
        twin = ", ".join(f"{m:.3f}" for m in twins.similarity[Metric.spearman_abs].draw_means)
        floor = result.retrain_floor[Metric.spearman_abs].mean
        cross = twins.cross_image_floor[Metric.spearman_abs].mean
        outcome = "baseline" if result.verdict is None else result.verdict.outcome.value
        print(f"| {method.name} | {twin} | {floor:.3f} | {cross:.3f} | {outcome} |")


if __name__ == "__main__":
    main()
