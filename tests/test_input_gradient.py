"""Converted convolutions with few output channels give their input gradient as a forward convolution."""

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from workers.engine.artifacts import load_model
from workers.engine.onnx_import.input_gradient import Conv2d

FLIPPED = "_FlippedInputGradientBackward"


class MixedConvs(nn.Module):
    """Two layers the rule takes (1 -> 6 channels, 5x5; 6 -> 8, dilated and padded) and two it leaves
    (16 output channels; stride 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.few = nn.Conv2d(1, 6, 5)
        self.dilated = nn.Conv2d(6, 8, 3, padding=1, dilation=2)
        self.wide = nn.Conv2d(8, 16, 3)
        self.strided = nn.Conv2d(16, 4, 3, stride=2)
        self.head = nn.Linear(4 * 9 * 9, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.dilated(torch.relu(self.few(x))))
        x = torch.relu(self.strided(torch.relu(self.wide(x))))
        return self.head(x.flatten(1))


@pytest.fixture(scope="module")
def eager() -> MixedConvs:
    torch.manual_seed(0)
    return MixedConvs().eval()


@pytest.fixture(scope="module")
def onnx_path(eager: MixedConvs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mixed") / "mixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            eager, (torch.randn(2, 1, 28, 28),), path, dynamo=False, input_names=["input"],
            output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )  # fmt: skip
    return path


def input_gradient(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, str]]:
    """d(logit 0)/dx, and the backward node of every Conv2d's output by layer name."""
    nodes: dict[str, str] = {}
    handles = [
        module.register_forward_hook(
            lambda _, __, out, name=name: nodes.__setitem__(name, type(out.grad_fn).__name__)
        )
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d)
    ]
    leaf = x.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(model(leaf)[:, 0].sum(), leaf)
    for handle in handles:
        handle.remove()
    return gradient, nodes


def test_few_channel_layers_flip_and_the_gradient_matches_torch(eager: MixedConvs, onnx_path: Path) -> None:
    converted = load_model(onnx_path).module.eval().requires_grad_(False)
    x = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    gradient, nodes = input_gradient(converted, x)
    expected, _ = input_gradient(eager.requires_grad_(False), x)
    flipped = {converted.layer_names[name] for name, node in nodes.items() if node == FLIPPED}
    assert flipped == {"few", "dilated"}
    assert len(nodes) == 4
    torch.testing.assert_close(gradient, expected, rtol=1e-4, atol=1e-6)


def test_training_keeps_torchs_convolution(onnx_path: Path) -> None:
    converted = load_model(onnx_path).module.train().requires_grad_(True)
    _, nodes = input_gradient(converted, torch.randn(2, 1, 28, 28))
    assert FLIPPED not in nodes.values()
    converted(torch.randn(2, 1, 28, 28)).sum().backward()
    assert all(parameter.grad is not None for parameter in converted.parameters())


@pytest.mark.parametrize(
    ("padding", "dilation", "kernel"), [(0, 1, 5), (1, 1, 3), (2, 2, 3), ((1, 0), (1, 3), (3, 2))]
)
def test_the_flipped_gradient_is_exact(padding: object, dilation: object, kernel: object) -> None:
    torch.manual_seed(2)
    conv = Conv2d(2, 3, kernel, padding=padding, dilation=dilation).double().requires_grad_(False)
    x = torch.randn(2, 2, 9, 10, dtype=torch.float64, requires_grad=True)
    assert type(conv(x).grad_fn).__name__ == FLIPPED
    assert torch.autograd.gradcheck(conv, (x,))
    assert torch.autograd.gradgradcheck(conv, (x,))


def test_padding_modes_keep_torchs_convolution() -> None:
    conv = Conv2d(1, 4, 3, padding="same").requires_grad_(False)
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    assert type(conv(x).grad_fn).__name__ != FLIPPED
