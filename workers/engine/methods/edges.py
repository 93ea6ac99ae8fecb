"""The paper's model-free baseline: a Sobel edge detector. Any method whose maps resemble it, and stay
the same under randomization, explains the input rather than the model."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.engine.methods.base import SaliencyMethod

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def sobel_magnitude(inputs: Tensor) -> Tensor:
    """Per-channel Sobel gradient magnitude, same shape as ``inputs`` (edges replicated at the border)."""
    channels = inputs.shape[1]
    kernel_x = _SOBEL_X.to(inputs).expand(channels, 1, 3, 3)
    kernel_y = kernel_x.transpose(-1, -2)
    padded = F.pad(inputs, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(padded, kernel_x, groups=channels)
    gy = F.conv2d(padded, kernel_y, groups=channels)
    return torch.sqrt(gx.square() + gy.square())


class EdgeDetector(SaliencyMethod):
    name = "edge_detector"
    uses_model = False

    def attribute(
        self, model: nn.Module, inputs: Tensor, target: Tensor, generator: torch.Generator
    ) -> Tensor:
        return sobel_magnitude(inputs.detach())
