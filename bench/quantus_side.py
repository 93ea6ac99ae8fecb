"""Quantus 0.6 MPRT on the matched work; run by bench/quantus_mprt.py with its own virtualenv's Python
(Quantus is LGPL and never a dependency of the project), so it imports nothing of the project.

    <quantus venv>/bin/python bench/quantus_side.py DATA ROUNDS [MODEL]

MODEL is ``lenet`` (the default: DATA/lenet_mnist.onnx, with Quantus's own LeNet) or ``resnet18-112``
(DATA/model_onnx_legacy.onnx, as bench/scale.py's write_inputs names it, with ResNet18 below). Prints one
JSON line per round: seconds of the three MPRT calls, and each method's mean Spearman per layer. The
weights come from the ONNX file's initializers, so both sides explain the same function.
"""

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import quantus
import torch
from onnx import numpy_helper
from quantus.helpers.model.models import LeNet
from torch import nn

METHODS = {
    "gradient": "Saliency",
    "integrated_gradients": "IntegratedGradients",
    "gradient_x_input": "InputXGradient",
}


def probes(data: Path) -> np.ndarray:
    """The probe images as float32 (bench/matched.py's probes, without the project); the ResNet's have
    no labels, and every map explains the trained model's prediction, the engine's default target."""
    with np.load(data / "probes.npz") as archive:
        return archive["x"].astype(np.float32)


def lenet(data: Path) -> torch.nn.Module:
    initializers = onnx.load(data / "lenet_mnist.onnx").graph.initializer
    state = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in initializers if "." in i.name}
    model = LeNet()
    model.load_state_dict(state)
    return model.eval()


class Block(nn.Module):
    """The tests' BasicBlock with its BatchNorm folded into the convolutions' biases, as the ONNX export
    folds it and the engine randomizes it. The shortcut is registered first because it runs first:
    Quantus walks the modules in registration order, the engine in forward order."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.downsample = (
            nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride)) if stride != 1 or inputs != outputs else None
        )
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + identity)


class ResNet18(nn.Module):
    """bench/scale.py's ResNetLike (ResNet-18 layout, 10 classes) with BatchNorm folded: 21 layers with
    parameters, named as the engine names them (conv1, layer2.0.downsample.0, ..., fc). Activations and
    pooling are functions, so only the 21 layers have ``reset_parameters`` for Quantus to call."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3)
        stages, inputs = [], 64
        for index in range(4):
            width = 64 * 2**index
            stages.append(nn.Sequential(Block(inputs, width, 2 if index else 1), Block(width, width, 1)))
            inputs = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(inputs, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def resnet18(data: Path) -> torch.nn.Module:
    """ResNet18 with the weights and biases of the graph's Conv and Gemm nodes, which the export writes
    in forward order: the order ResNet18 registers its layers in."""
    graph = onnx.load(data / "model_onnx_legacy.onnx").graph
    values = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer}
    nodes = [node for node in graph.node if node.op_type in ("Conv", "Gemm")]
    model = ResNet18()
    layers = [module for module in model.modules() if isinstance(module, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for node, layer in zip(nodes, layers, strict=True):
            layer.weight.copy_(values[node.input[1]])
            layer.bias.copy_(values[node.input[2]])
    return model.eval()


MODELS = {"lenet": lenet, "resnet18-112": resnet18}


def explain(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **kwargs: object) -> np.ndarray:
    """Quantus's explain with |.| summed over channels, as the engine (and the paper) reduce a map;
    Quantus's own reduction sums the signed channels. For one channel (the LeNet) the maps are the same."""
    maps = quantus.explain(model, inputs, targets, **kwargs, reduce_axes=())
    return np.abs(maps).sum(axis=1, keepdims=True)


def call(
    metric: quantus.Metric,
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    method: str,
    explain_func: Callable[..., np.ndarray] = explain,
) -> Any:
    """One Quantus metric on every probe in one batch, maps from ``explain_func`` with ``method``."""
    return metric(
        model=model,
        x_batch=x,
        y_batch=y,
        a_batch=None,
        device="cpu",
        batch_size=len(x),
        explain_func=explain_func,
        explain_func_kwargs={"method": method},
    )


def main() -> None:
    data, rounds = Path(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(torch.get_num_threads())
    x = probes(data)
    model = MODELS[sys.argv[3] if len(sys.argv) > 3 else "lenet"](data)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    for _ in range(rounds):
        metric = quantus.MPRT(
            layer_order="top_down",
            similarity_func=quantus.similarity_func.correlation_spearman,
            abs=True,
            normalise=True,
            disable_warnings=True,
            display_progressbar=False,
        )
        started = time.perf_counter()
        layers = {}
        for name, method in METHODS.items():
            scores = call(metric, model, x, y, method)
            layers[name] = {layer: float(np.mean(values)) for layer, values in scores.items()}
        print(json.dumps({"seconds": time.perf_counter() - started, "layers": layers}), flush=True)


if __name__ == "__main__":
    main()
