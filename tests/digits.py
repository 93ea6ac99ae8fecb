"""Small CNNs trained at test time on scikit-learn's bundled digits, like the paper's MNIST CNN in
miniature: seconds to train, real weights, real exports. ``DigitsCNN`` is 'same'-padded; ``UnpaddedLeNet``
has LeNet's unpadded convolutions, whose border pattern every gradient map shares; ``ShallowGapNet`` is
shallow enough that every method sees its weights."""

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

IMAGE_SIZE = 16


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


class UnpaddedLeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 3)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * 2 * 2, 48)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(48, 32)
        self.relu4 = nn.ReLU()
        self.fc3 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.flatten(self.pool2(self.relu2(self.conv2(x))))
        return self.fc3(self.relu4(self.fc2(self.relu3(self.fc1(x)))))


class ShallowGapNet(nn.Module):
    """Two convolutions and global average pooling: shallow enough that every method sees its weights."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.relu2(self.conv2(self.pool(self.relu1(self.conv1(x)))))
        return self.fc(self.gap(features).flatten(1))


@dataclass(frozen=True)
class DigitsData:
    x_train: np.ndarray  # float32 [N, 1, 16, 16] in [0, 1], exact zeros in the background
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


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


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def export_onnx(model: nn.Module, path, *, dynamo: bool) -> None:  # type: ignore[no-untyped-def]
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
