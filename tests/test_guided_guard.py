"""Guided Backprop must never silently fall back to plain gradients.

Functional ReLUs (F.relu, as torch.export graphs and many scripted models have) are made correct: the
conversion through ONNX turns every ReLU into an nn.ReLU module. Every other nonlinearity between input
and output, however the exporter spells it (SiLU as Sigmoid x Mul, GELU as an Erf chain), is named and
the guided methods are refused.
"""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.architectures import converted
from workers.core.audit_settings import AuditSettings
from workers.core.errors import MethodUnsupportedError
from workers.engine.artifacts import load_model
from workers.engine.audit import run_audit
from workers.engine.methods import MethodContext, create_method
from workers.engine.methods.gradcam_target import choose_target


class ModuleReluNet(nn.Module):
    def __init__(self, activation: nn.Module | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.activation = activation or nn.ReLU()
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.activation(self.conv(x)).flatten(1))


class FunctionalReluNet(ModuleReluNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.conv(x)).flatten(1))


def _weights_from(source: nn.Module, target: nn.Module) -> nn.Module:
    target.load_state_dict(source.state_dict())
    return target.eval()


def _export_onnx(model: nn.Module, path: Path) -> Path:
    torch.onnx.export(
        model.eval(),
        (torch.zeros(2, 1, 8, 8),),
        path,
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        dynamic_axes={"input": {0: "batch"}},
    )
    return path


def _guided(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return create_method("guided_backprop", MethodContext(AuditSettings())).attribute(
        model, x, target, torch.Generator()
    )


def test_functional_relus_are_made_correct_by_conversion(tmp_path: Path) -> None:
    torch.manual_seed(0)
    functional = FunctionalReluNet().eval()
    reference = _weights_from(functional, ModuleReluNet())
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([0, 1, 2, 0])
    program = tmp_path / "functional.pt2"
    exported = torch.export.export(functional, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(exported, program)
    converted = load_model(program, example_input=x.numpy()[:2]).module
    create_method("guided_backprop", MethodContext(AuditSettings())).check_supported(converted, x[:1])
    expected = _guided(reference, x, target)
    assert torch.allclose(_guided(converted, x, target), expected, atol=1e-6)
    gradient = create_method("gradient", MethodContext(AuditSettings()))
    assert not torch.allclose(
        gradient.attribute(reference, x, target, torch.Generator()), expected, atol=1e-3
    )


@pytest.mark.parametrize(
    ("activation", "operation"), [(nn.ReLU6(), "Clip \\(ReLU6"), (nn.LeakyReLU(0.1), "LeakyReLU")]
)
def test_rectifiers_guided_backprop_cannot_override_are_refused(
    tmp_path: Path, activation: nn.Module, operation: str
) -> None:
    torch.manual_seed(0)
    model_path = _export_onnx(ModuleReluNet(activation), tmp_path / "model.onnx")
    probes = tmp_path / "probes.npy"
    np.save(probes, np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32))
    for method in ("guided_backprop", "guided_gradcam"):
        settings = AuditSettings(methods=["gradient", method], tests=["cascading"])
        with pytest.raises(MethodUnsupportedError, match=f"other than ReLU \\(1 x {operation}"):
            run_audit(model_path, probes, settings, tmp_path / "out")
    report = run_audit(
        model_path, probes, AuditSettings(methods=["gradient"], tests=["cascading"]), tmp_path / "out"
    )
    assert [method.name for method in report.methods] == ["gradient"]


class ActivationNet(nn.Module):
    def __init__(self, activation: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.activation = activation
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.activation(self.conv(x)).flatten(1))


class Gated(nn.Module):
    """A product of two activations, as gating and squeeze-excitation compute."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.tanh(x.mean((2, 3), keepdim=True))


@pytest.mark.parametrize(
    ("activation", "named"),
    [
        (nn.Sigmoid(), "Sigmoid"),
        (nn.Tanh(), "Tanh"),
        (nn.GELU(), "Erf (GELU)"),
        (nn.GELU(approximate="tanh"), "Tanh"),
        (nn.SiLU(), "SiLU/Swish"),
        (nn.Hardswish(), "HardSwish"),
        (nn.Hardsigmoid(), "HardSigmoid"),
        (nn.ReLU6(), "Clip"),
        (nn.LeakyReLU(0.1), "LeakyReLU"),
        (nn.PReLU(), "PReLU"),
        (nn.ELU(), "ELU"),
        (nn.Softplus(), "Softplus"),
        (nn.Softmax(dim=1), "Softmax"),
        (Gated(), "product of two activations"),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, nn.Module) else None,
)
def test_every_nonlinearity_other_than_relu_is_named_and_refused(activation: nn.Module, named: str) -> None:
    x = torch.rand(2, 1, 8, 8)
    model = converted(ActivationNet(activation), x)
    for name in ("guided_backprop", "guided_gradcam"):
        method = create_method(name, MethodContext(AuditSettings(), choose_target(model, x, None)))
        with pytest.raises(MethodUnsupportedError, match=f"other than ReLU \\(.*{re.escape(named)}"):
            method.check_supported(model, x[:1])


def test_relus_max_pooling_and_linear_ops_are_accepted() -> None:
    x = torch.rand(2, 1, 8, 8)
    model = converted(
        nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4).eval(), nn.ReLU(), nn.MaxPool2d(2),
            nn.AvgPool2d(1), nn.Flatten(), nn.Dropout(), nn.Linear(16 * 4, 3),
        ),
        x,
    )  # fmt: skip
    create_method("guided_backprop", MethodContext(AuditSettings())).check_supported(model, x[:1])
