"""The matched LeNet work of the speed benchmarks, defined once.

The cascading test of ../shared/data/mnist-lenet (124 images) with Gradient, Integrated Gradients (10
steps, as Quantus's explain uses) and Gradient x Input, one draw (as Quantus makes), top-down: 6 model
states (trained, then 5 layers randomized cumulatively) x 124 x (1 + 10 + 1) = 1,488 forward and backward
passes per state.
"""

import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from workers.core.audit_settings import AuditSettings
from workers.core.report import AuditReport
from workers.engine import units
from workers.engine.artifacts import load_model
from workers.engine.audit import run_audit
from workers.engine.blocks import layer_blocks
from workers.engine.layers import layers_in_forward_order
from workers.engine.parameter_stages import randomized_stages

METHODS = ["gradient", "integrated_gradients", "gradient_x_input"]
IG_STEPS = 10
SETTINGS = AuditSettings(methods=METHODS, tests=["cascading"], draws=1, max_draws=1, ig_steps=IG_STEPS)


def probes(data: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(data / "probes.npz") as archive:
        return archive["x"].astype(np.float32), archive["y"]


def engine_audit(
    data: Path, out: Path, settings: AuditSettings = SETTINGS, model: str = "lenet_mnist.onnx"
) -> AuditReport:
    """The engine's audit of the matched work (or of ``settings``, or of another ``model`` file beside
    ``data``'s probes.npz): four metrics, both floors, intervals, archive."""
    return run_audit(data / model, data / "probes.npz", settings, out)


@contextmanager
def attribution_clock() -> Iterator[list[float]]:
    """Adds up the seconds the engine spends computing maps (its forward and backward passes) while
    inside: what is left of an audit is its metrics, summaries and archive."""
    seconds = [0.0]
    compute = units.maps

    def clocked(*args: object, **kwargs: object) -> Tensor:
        started = time.perf_counter()
        try:
            return compute(*args, **kwargs)
        finally:
            seconds[0] += time.perf_counter() - started

    units.maps = clocked
    try:
        yield seconds
    finally:
        units.maps = compute


def model_states(data: Path) -> Iterator[nn.Module]:
    """The trained model, then each cumulative top-down stage, as the engine builds them."""
    x, _ = probes(data)
    model = load_model(data / "lenet_mnist.onnx").module.eval().requires_grad_(False)
    layers = layers_in_forward_order(model, torch.from_numpy(x[:1]), model.layer_names)
    yield model
    for stage in randomized_stages(model, layer_blocks(layers), True, SETTINGS):
        yield stage.model


def floor_passes(model: nn.Module, x: Tensor, target: Tensor, batch: int) -> None:
    """The bare forward and backward passes of one model state: gradient, IG's scaled images, x again."""
    alphas = torch.linspace(0, 1, IG_STEPS)
    inputs = torch.cat([x, *(alpha * x for alpha in alphas), x])
    targets = target.repeat(IG_STEPS + 2)
    for start in range(0, len(inputs), batch):
        leaf = inputs[start : start + batch].clone().requires_grad_(True)
        score = model(leaf).gather(1, targets[start : start + batch].view(-1, 1)).sum()
        torch.autograd.grad(score, leaf)


def floor_seconds(data: Path, batch: int) -> float:
    """The bare loop over the 6 model states; model states are built before the clock starts."""
    x, _ = probes(data)
    inputs = torch.from_numpy(x)
    states = list(model_states(data))
    with torch.no_grad():
        target = states[0](inputs).argmax(dim=1)
    started = time.perf_counter()
    for model in states:
        floor_passes(model, inputs, target, batch)
    return time.perf_counter() - started


def best_floor(data: Path, batches: tuple[int, ...] = (124, 248, 496, 1488)) -> tuple[float, int]:
    """The fastest bare loop over the batch sizes tried, and its batch size."""
    return min((floor_seconds(data, batch), batch) for batch in batches)


def machine() -> str:
    return (
        f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU only'}"
    )


def timed(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started
