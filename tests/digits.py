"""Small CNNs trained at test time on scikit-learn's bundled digits, like the paper's MNIST CNN in
miniature: seconds to train, real weights, real exports. ``DigitsCNN`` is 'same'-padded; ``UnpaddedLeNet``
has LeNet's unpadded convolutions, whose border pattern every gradient map shares; ``ShallowGapNet`` is
shallow enough that every method sees its weights. ``DigitsCNN``, the data and the training are the
demo's (``workers.cli.demo``)."""

import numpy as np
import torch
from torch import nn

from workers.cli.demo import IMAGE_SIZE, DigitsCNN, DigitsData, digits_data, export_onnx, train_digits_cnn

__all__ = [
    "IMAGE_SIZE",
    "DigitsCNN",
    "DigitsData",
    "ShallowGapNet",
    "UnpaddedLeNet",
    "accuracy",
    "digits_data",
    "export_onnx",
    "train_digits_cnn",
]


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


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
