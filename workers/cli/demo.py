"""``saliency-audit demo``: a whole audit with no file to find first, in about a minute.

A small CNN is trained on scikit-learn's bundled digits (8x8 images upscaled to 16x16; seconds on a CPU),
exported to ONNX, and audited on held-out digits with every test, the data test training its random-label
twins and true-label controls on 200 images of the same training split. The tests build their models from
the same definitions (their twins learn 400 images).
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

IMAGE_SIZE = 16
PROBES = 64  # held-out digits audited
# A twin memorizes random labels in about as many epochs whatever the set's size (about 70 here), so its
# time grows with the images: measured on 2 CPU cores, 6-12 s a twin on 400, 31-41 s on all 1,500.
TWIN_TRAINING_IMAGES = 400
DEMO_TRAINING_IMAGES = 200  # the demo's twins: 2-4 s each, and every verdict of the paper's picture


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.relu4 = nn.ReLU()
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x)))))
        x = self.pool2(self.relu3(self.conv3(x)))
        return self.fc2(self.relu4(self.fc1(self.flatten(x))))


@dataclass(frozen=True)
class DigitsData:
    x_train: np.ndarray  # float32 [N, 1, 16, 16] in [0, 1], exact zeros in the background
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def twin_training_set(self) -> tuple[np.ndarray, np.ndarray]:
        """The training images (and labels) the data test's twins and controls learn."""
        return self.x_train[:TWIN_TRAINING_IMAGES], self.y_train[:TWIN_TRAINING_IMAGES]


def digits_data() -> DigitsData:
    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    upscaled = np.kron(images, np.ones((2, 2), dtype=np.float32))[:, None]  # nearest: zeros stay zeros
    order = np.random.default_rng(0).permutation(len(images))
    train, test = order[:1500], order[1500:]
    labels = digits.target.astype(np.int64)
    return DigitsData(upscaled[train], labels[train], upscaled[test], labels[test])


def train_digits_cnn(
    data: DigitsData, *, seed: int = 0, epochs: int = 12, architecture: type[nn.Module] = DigitsCNN
) -> nn.Module:
    torch.manual_seed(seed)
    model = architecture()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    return model.eval()


def export_onnx(model: nn.Module, path: Path, *, dynamo: bool) -> None:
    example = torch.zeros(2, 1, IMAGE_SIZE, IMAGE_SIZE)
    if dynamo:
        torch.onnx.export(
            model,
            (example,),
            path,
            dynamo=True,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            external_data=False,
            verbose=False,
        )
    else:
        torch.onnx.export(
            model,
            (example,),
            path,
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )


@dataclass(frozen=True)
class DemoInputs:
    model: Path
    probes: Path
    training_data: Path


def build_demo_inputs(folder: Path) -> DemoInputs:
    """Train the digits CNN and write what an audit of it needs into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    data = digits_data()
    inputs = DemoInputs(folder / "digits_cnn.onnx", folder / "probes.npz", folder / "training.npz")
    export_onnx(train_digits_cnn(data), inputs.model, dynamo=False)
    np.savez(inputs.probes, x=data.x_test[:PROBES], y=data.y_test[:PROBES])
    x, y = data.x_train[:DEMO_TRAINING_IMAGES], data.y_train[:DEMO_TRAINING_IMAGES]
    np.savez(inputs.training_data, x=x, y=y)
    return inputs
