"""The architectures people ship, in every file format, audited through the CLI.

For each small model built from a family's blocks (tests/architectures.py) and each of the four files it
can be exported to: the conversion is verified, Gradient maps equal autograd through the original module,
Guided Backprop is refused exactly where a nonlinearity other than ReLU exists, GradCAM reads the output
of the family's conventional layer, and the four files give the same layer list.
"""

import json
import zipfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tests.architectures import ARCHITECTURES, FORMATS, IMAGE_SIZE, Architecture, export, random_weights
from workers.cli.main import main
from workers.core.report import AuditReport

PROBES = 8
FAST = ["--tests", "cascading", "--draws", "1", "--max-draws", "1", "--batch-size", "8"]


@pytest.fixture(scope="module")
def probes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    x = np.random.default_rng(0).random((PROBES, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    path = tmp_path_factory.mktemp("probes") / "probes.npy"
    np.save(path, x)
    return path, x


def _audit(model_file: Path, probes: Path, out: Path, methods: str) -> int:
    return main(["run", str(model_file), str(probes), "--out", str(out), "--methods", methods, *FAST])


def _trained_maps(out: Path, method: str) -> np.ndarray:
    with zipfile.ZipFile(out / "maps.zip") as archive:
        return np.load(BytesIO(archive.read(f"maps/{method}/trained.npy")))


def _autograd_gradient(model: nn.Module, x: Tensor) -> Tensor:
    x = x.clone().requires_grad_(True)
    logits = model(x)
    logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
    return x.grad


def _reference_gradcam(model: nn.Module, architecture: Architecture, x: Tensor) -> Tensor:
    """Grad-CAM on the output of the family's conventional module of the original torch model."""
    captured: list[Tensor] = []
    layer = model.get_submodule(architecture.gradcam_layer)
    handle = layer.register_forward_hook(lambda _m, _i, output: captured.append(output))
    logits = model(x)
    handle.remove()
    (gradient,) = torch.autograd.grad(logits.gather(1, logits.argmax(1, keepdim=True)).sum(), captured[0])
    activation = captured[0]
    if activation.dim() == 3:  # tokens: drop the class token, lay the rest out on the patch grid
        side = int((activation.shape[1] - architecture.class_tokens) ** 0.5)

        def grid(tokens: Tensor) -> Tensor:
            return tokens[:, architecture.class_tokens :].transpose(1, 2).reshape(len(x), -1, side, side)

        activation, gradient = grid(activation), grid(gradient)
    cam = F.relu((gradient.mean((2, 3), keepdim=True) * activation).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False).detach()
    peak = cam.flatten(1).max(1).values.view(-1, 1, 1, 1)
    return torch.where(peak > 0, cam / peak, torch.zeros_like(cam))


@pytest.mark.parametrize("architecture", ARCHITECTURES, ids=lambda a: a.name)
def test_every_file_of_an_architecture_is_audited_faithfully(
    architecture: Architecture,
    probes: tuple[Path, np.ndarray],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    probes_path, x_array = probes
    model = random_weights(architecture)
    x = torch.from_numpy(x_array)
    expected_gradient = _autograd_gradient(model, x)
    expected_cam = _reference_gradcam(model, architecture, x)
    layer_lists = {}
    for fmt in FORMATS:
        if architecture.name == "vit" and fmt == "torchscript":
            continue  # covered by the refusal test below
        out = tmp_path / fmt
        model_file = export(model, fmt, tmp_path, x[:2])
        guided = _audit(model_file, probes_path, out, "gradient,guided_backprop,gradcam")
        if not architecture.relu_only:
            assert guided == 2, fmt
            assert "nonlinearities other than ReLU" in capsys.readouterr().err
            assert _audit(model_file, probes_path, out, "gradient,gradcam") in (0, 1), fmt
        report = AuditReport.model_validate_json((out / "report.json").read_text())
        assert report.conversion.max_abs_logit_diff <= report.conversion.atol, fmt
        assert report.conversion.argmax_agreement == 1.0, fmt
        gradient = torch.from_numpy(_trained_maps(out, "gradient"))
        error = (gradient - expected_gradient).flatten(1).norm(dim=1) / expected_gradient.flatten(1).norm(
            dim=1
        )
        assert (error <= 1e-4).float().mean() >= 0.95, (fmt, error.max())
        assert torch.allclose(torch.from_numpy(_trained_maps(out, "gradcam")), expected_cam, atol=1e-4), fmt
        layer_lists[fmt] = [(layer.name, layer.kind) for layer in report.layers]
    first = next(iter(layer_lists.values()))
    assert all(layers == first for layers in layer_lists.values()), json.dumps(layer_lists, indent=1)


def test_a_scripted_transformer_the_lowering_cannot_take_is_refused_with_advice(
    probes: tuple[Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vit = next(a for a in ARCHITECTURES if a.name == "vit")
    model_file = export(
        random_weights(vit), "torchscript", tmp_path, torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    )
    assert _audit(model_file, probes[0], tmp_path / "out", "gradient") == 2
    err = capsys.readouterr().err
    assert "could not be loaded and lowered to ONNX" in err and "Export it to ONNX yourself" in err
