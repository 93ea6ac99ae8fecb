"""Quantus 0.6 MPRT on the matched LeNet work; run by bench/quantus_mprt.py with its own virtualenv's
Python (Quantus is LGPL and never a dependency of the project), so it imports nothing of the project.

    <quantus venv>/bin/python bench/quantus_side.py DATA ROUNDS

Prints one JSON line per round: seconds of the three MPRT calls, and each method's mean Spearman per
layer. The weights come from the ONNX file's initializers into Quantus's own LeNet.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import quantus
import torch
from onnx import numpy_helper
from quantus.helpers.model.models import LeNet

METHODS = {
    "gradient": "Saliency",
    "integrated_gradients": "IntegratedGradients",
    "gradient_x_input": "InputXGradient",
}


def probes(data: Path) -> tuple[np.ndarray, np.ndarray]:
    """The probe images as float32 and their labels (bench/matched.py's probes, without the project)."""
    with np.load(data / "probes.npz") as archive:
        return archive["x"].astype(np.float32), archive["y"]


def lenet(data: Path) -> torch.nn.Module:
    initializers = onnx.load(data / "lenet_mnist.onnx").graph.initializer
    state = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in initializers if "." in i.name}
    model = LeNet()
    model.load_state_dict(state)
    return model.eval()


def main() -> None:
    data, rounds = Path(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(torch.get_num_threads())
    x, y = probes(data)
    model = lenet(data)
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
            scores = metric(
                model=model,
                x_batch=x,
                y_batch=y,
                a_batch=None,
                device="cpu",
                batch_size=124,
                explain_func=quantus.explain,
                explain_func_kwargs={"method": method},
            )
            layers[name] = {layer: float(np.mean(values)) for layer, values in scores.items()}
        print(json.dumps({"seconds": time.perf_counter() - started, "layers": layers}), flush=True)


if __name__ == "__main__":
    main()
