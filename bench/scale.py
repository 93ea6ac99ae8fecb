"""Benchmark 3: a ResNet-18-like model at 224 x 224: wall time and peak memory, and how time grows.

    python -m bench.scale [--device auto] [--budget MIB] [--ig-steps N] [--noise-samples N] [--draws N]
                          [--skip-growth]

The model is torchvision's ResNet-18 layout written from the tests' BasicBlock (widths 64-512, two
blocks per stage, 10 classes, random weights with BatchNorm statistics that differ per layer), exported
with the legacy ONNX exporter; 16 probe images of smooth random blobs. The main run audits every method
with both parameter tests; the growth runs time Gradient's cascading test for 4, 8 and 16 images, 1 and
2 draws, and a ResNet-10-like model (one block per stage). Every audit runs in a child process, which
reports its wall time and peak resident memory (and the GPU's peak where there is one). Writes
bench/scale.json.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.matched import machine
from tests.architectures import BasicBlock, export
from workers.core.audit_settings import AuditSettings
from workers.engine.audit import run_audit

HERE = Path(__file__).parent
SIZE = 224
IMAGES = 16


class ResNetLike(nn.Module):
    """torchvision's ResNet layout: a 7x7 stem of ``base`` channels, four stages of ``blocks`` blocks whose
    widths double, a linear head. ``block(inputs, width, stride)`` gives ``expansion`` x width channels:
    the tests' BasicBlock (1, ResNet-18/34) or a Bottleneck (4, ResNet-50)."""

    def __init__(
        self,
        blocks: tuple[int, ...] = (2, 2, 2, 2),
        classes: int = 10,
        block: Callable[[int, int, int], nn.Module] = BasicBlock,
        expansion: int = 1,
        base: int = 64,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, base, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, inputs = [], base
        for index, count in enumerate(blocks):
            width, stage = base * 2**index, []
            for i in range(count):
                stage.append(block(inputs, width, 2 if i == 0 and index else 1))
                inputs = expansion * width
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inputs, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def with_statistics(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with BatchNorm statistics that differ per layer, as a trained model's do."""
    with torch.no_grad():
        for name, tensor in model.named_buffers():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                tensor.uniform_(-0.2, 0.2)
    return model.eval()


def write_inputs(folder: Path, blocks: tuple[int, ...], images: int, size: int = SIZE) -> tuple[Path, Path]:
    """The seeded model as ``model_onnx_legacy.onnx`` and ``images`` probes of ``size`` x ``size`` as
    ``probes.npz``; bench/quantus_mprt.py audits the same files at 112 x 112, where the blobs shrink with
    the side so the images look the same."""
    torch.manual_seed(0)
    model = with_statistics(ResNetLike(blocks))
    model_path = export(model, "onnx_legacy", folder, torch.zeros(1, 3, size, size))
    rng = np.random.default_rng(0)
    rows, columns = np.mgrid[0:size, 0:size]
    x = rng.normal(scale=0.1, size=(images, 3, size, size))
    for image in range(images):
        for _ in range(4):
            centre, radius = rng.uniform(0, size, 2), rng.uniform(10, 50) * size / SIZE
            blob = np.exp(-((rows - centre[0]) ** 2 + (columns - centre[1]) ** 2) / (2 * radius**2))
            x[image] += rng.uniform(-1, 1, (3, 1, 1)) * blob
    probes = folder / "probes.npz"
    np.savez(probes, x=x.astype(np.float32))
    return model_path, probes


def one(config: dict) -> dict:
    """One audit in this process: wall time, peak resident memory, the report's memory section."""
    folder = Path(tempfile.mkdtemp())
    model_path, probes = write_inputs(folder, tuple(config.pop("blocks")), config.pop("images"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    report = run_audit(model_path, probes, AuditSettings(**config), folder / "out")
    wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "seconds": wall,
        "peak_rss_mib": peak,
        "rss_before_audit_mib": before,
        "layers": len(report.layers),
        "memory": report.memory.model_dump() if report.memory else None,
        "device": report.device,
        "method_seconds": {m.name: m.seconds for m in report.methods},
    }


def in_child(config: dict) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "bench.scale", "--one", json.dumps(config)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--budget", type=int, default=4096, help="memory budget in MiB (default: 4096)")
    parser.add_argument("--ig-steps", type=int, default=AuditSettings().ig_steps)
    parser.add_argument("--noise-samples", type=int, default=AuditSettings().noise_samples)
    parser.add_argument("--draws", type=int, default=AuditSettings().draws)
    parser.add_argument("--skip-growth", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(json.loads(args.one))))
        return
    common = {"device": args.device, "memory_budget_mib": args.budget}
    main_config = {
        **common, "blocks": [2, 2, 2, 2], "images": IMAGES, "ig_steps": args.ig_steps,
        "noise_samples": args.noise_samples, "draws": args.draws, "max_draws": args.draws,
    }  # fmt: skip
    results = {"machine": machine(), "main": {"config": main_config, **in_child(dict(main_config))}}
    row = results["main"]
    print(f"machine: {machine()}\n")
    print("| run | layers | images | draws | seconds | peak RSS MiB | GPU peak MiB | budget MiB |")
    print("|---|---|---|---|---|---|---|---|")

    def line(name: str, config: dict, result: dict) -> None:
        gpu = result["memory"]["device_peak_mib"] if result["memory"] else None
        gpu = "-" if gpu is None else round(gpu)
        print(
            f"| {name} | {result['layers']} | {config['images']} | {config.get('draws', 3)} | "
            f"{result['seconds']:.1f} | {result['peak_rss_mib']:.0f} | {gpu} | "
            f"{config['memory_budget_mib']} |"
        )

    line("all methods, both tests", main_config, row)
    if not args.skip_growth:
        growth = []
        for blocks, images, draws in (
            ((2,) * 4, 4, 1),
            ((2,) * 4, 8, 1),
            ((2,) * 4, 16, 1),
            ((2,) * 4, 16, 2),
            ((1,) * 4, 16, 1),
        ):
            config = {
                **common, "blocks": list(blocks), "images": images, "draws": draws, "max_draws": draws,
                "methods": ["gradient"], "tests": ["cascading"],
            }  # fmt: skip
            result = in_child(dict(config))
            growth.append({"config": config, **result})
            line(f"gradient, cascading, blocks {blocks}", config, result)
        results["growth"] = growth
    (HERE / "scale.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
