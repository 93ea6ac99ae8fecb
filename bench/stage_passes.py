"""Image-passes of a default audit of a ResNet-50-like model: stages by block with shared work against
one layer per stage without it (issue 27, decisions 0024 and 0025).

    python -m bench.stage_passes [--width 8] [--size 32] [--images 16]

torchvision's ResNet-50 layout (Bottleneck blocks, stages of 3/4/6/3, 53 layers with parameters) with
random weights, exported with the legacy ONNX exporter, audited with the default settings (every method,
cascading and independent, IG 50 steps, 50 noise samples, 3 draws growing to 9) once with ``stages``
blocks and once with layers. An image-pass is one image forward (or backward) through the model, whatever
its width and resolution, so a narrow model at a small size counts what the full one would, in minutes
instead of hours (the draws an undecided verdict adds depend on the weights, and are reported). Without
sharing, VarGrad would run SmoothGrad's passes again and Guided GradCAM Guided Backprop's and GradCAM's:
that count is the per-layer audit's plus those methods' own (the maps are bit-identical either way).
Writes bench/stage_passes.json.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.matched import machine
from bench.scale import ResNetLike, with_statistics
from bench.tables import markdown_table
from tests.architectures import export
from workers.core.audit_settings import AuditSettings
from workers.core.report import AuditReport
from workers.engine.audit import run_audit

HERE = Path(__file__).parent


class Bottleneck(nn.Module):
    """torchvision's: 1x1 reduce, 3x3 (stride), 1x1 expand by 4, a 1x1 shortcut where the shape changes."""

    def __init__(self, inputs: int, width: int, stride: int) -> None:
        super().__init__()
        outputs = 4 * width
        self.conv1, self.bn1 = nn.Conv2d(inputs, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, outputs, 1, bias=False), nn.BatchNorm2d(outputs)
        self.relu = nn.ReLU()
        self.downsample = (
            nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))
            if stride != 1 or inputs != outputs
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


def write_inputs(folder: Path, base: int, size: int, images: int) -> tuple[Path, Path]:
    torch.manual_seed(0)
    model = with_statistics(ResNetLike((3, 4, 6, 3), block=Bottleneck, expansion=4, base=base))
    model_path = export(model, "onnx_legacy", folder, torch.zeros(1, 3, size, size))
    probes = folder / "probes.npy"
    np.save(probes, np.random.default_rng(0).normal(size=(images, 3, size, size)).astype(np.float32))
    return model_path, probes


def unshared_backward(report: AuditReport) -> int:
    """The audit's backward passes had every method computed its maps alone."""
    own = {m.name: m.image_passes.backward for m in report.methods if m.image_passes is not None}
    again = sum(own[m] for m in ("smoothgrad", "guided_backprop", "gradcam") if m in own)
    return report.image_passes.backward + again  # type: ignore[union-attr]


def model_arguments(description: str) -> argparse.ArgumentParser:
    """The options that size the model and its probes."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--width", type=int, default=8, help="channels of the stem (torchvision: 64)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--images", type=int, default=16)
    return parser


def main() -> None:
    args = model_arguments(__doc__).parse_args()
    folder = Path(tempfile.mkdtemp())
    model_path, probes = write_inputs(folder, args.width, args.size, args.images)
    runs = {}
    for stages in ("blocks", "layers"):
        started = time.perf_counter()
        report = run_audit(model_path, probes, AuditSettings(stages=stages), folder / stages)
        seconds = time.perf_counter() - started
        test = report.methods[0].tests[0]
        draws = {f"{m.name} {t.test.value}": t.draws for m in report.methods for t in m.tests if t.verdict}
        runs[stages] = {
            "seconds": seconds,
            "layers": len(report.layers),
            "stages": len(test.stages) - 1,
            "backward": report.image_passes.backward,  # type: ignore[union-attr]
            "backward_unshared": unshared_backward(report),
            "draws": draws,
            "per_method": {m.name: m.image_passes.backward for m in report.methods},  # type: ignore[union-attr]
        }
    blocks, layers = runs["blocks"], runs["layers"]
    print(f"machine: {machine()}\n")
    rows = [
        [name, run["layers"], run["stages"], f"{run['backward']:,}", f"{run['backward_unshared']:,}",
         f"{run['seconds']:.0f}", sum(run["draws"].values())]
        for name, run in runs.items()
    ]  # fmt: skip
    print(
        markdown_table(
            ["stages", "layers", "stages per draw", "backward image-passes", "without sharing", "seconds",
             "draws (sum over methods and tests)"],
            rows,
        )
    )  # fmt: skip
    ratio = layers["backward_unshared"] / blocks["backward"]
    print(f"\nper-layer stages without sharing / block stages with sharing: {ratio:.2f}x")
    result = {"machine": machine(), "width": args.width, "size": args.size, "images": args.images}
    (HERE / "stage_passes.json").write_text(
        json.dumps(result | {"runs": runs, "ratio": ratio}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
