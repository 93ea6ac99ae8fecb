"""Each saliency method against an independent computation of what it should return."""

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from tests.architectures import converted
from workers.core.audit_settings import METHOD_NAMES, AuditSettings
from workers.core.errors import AuditInputError, MethodUnsupportedError
from workers.engine.methods import MethodContext, available_methods, create_method
from workers.engine.methods.edges import sobel_magnitude
from workers.engine.methods.gradcam_target import choose_target


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # same weights every time, global RNG left as it was
            torch.manual_seed(0)
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.relu = nn.ReLU()
            self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).flatten(1))


class FunctionalReluCNN(SmallCNN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.conv(x)).flatten(1))


class StridedCNN(nn.Module):
    """GradCAM's layer (``conv``) outputs 4 x 4 maps for 8 x 8 inputs, so its CAM must be upsampled."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.conv = nn.Conv2d(1, 4, 3, stride=2, padding=1)
            self.relu = nn.ReLU()
            self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).flatten(1))


def _method(name: str, model: nn.Module | None = None, **settings: object):  # type: ignore[no-untyped-def]
    """``name`` set up for ``model`` (a converted graph) where the method reads a layer."""
    gradcam = choose_target(model, torch.zeros(1, 1, 8, 8), None) if model is not None else None
    return create_method(name, MethodContext(AuditSettings(**settings), gradcam))


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    return x, torch.tensor([0, 1, 2, 0, 1])


def _autograd_gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    model(x)[torch.arange(len(x)), target].sum().backward()
    return x.grad


def test_registry_holds_every_method_of_the_paper() -> None:
    assert available_methods() == [
        "edge_detector",
        "gradcam",
        "gradient",
        "gradient_x_input",
        "guided_backprop",
        "guided_gradcam",
        "integrated_gradients",
        "smoothgrad",
        "vargrad",
    ]
    assert sorted(METHOD_NAMES) == available_methods()  # settings refuse unknown names without torch


def test_settings_refuse_an_unknown_method_before_any_model_is_loaded() -> None:
    with pytest.raises(ValidationError, match="unknown saliency method 'lime'"):
        AuditSettings(methods=["gradient", "lime"])


def test_unknown_method_is_refused_with_the_list_of_methods() -> None:
    with pytest.raises(AuditInputError, match="available: edge_detector, gradcam"):
        _method("lime")


def test_gradient_and_gradient_x_input_match_autograd() -> None:
    model, (x, target) = SmallCNN().eval(), _inputs()
    expected = _autograd_gradient(model, x, target)
    generator = torch.Generator()
    assert torch.allclose(_method("gradient").attribute(model, x, target, generator), expected)
    assert torch.allclose(_method("gradient_x_input").attribute(model, x, target, generator), expected * x)


def test_integrated_gradients_satisfies_completeness() -> None:
    model, (x, target) = SmallCNN().eval(), _inputs()
    maps = _method("integrated_gradients", ig_steps=200, internal_batch_size=7).attribute(
        model, x, target, torch.Generator()
    )
    with torch.no_grad():
        gap = model(x)[torch.arange(5), target] - model(torch.zeros_like(x))[torch.arange(5), target]
    assert torch.allclose(maps.flatten(1).sum(1), gap, atol=1e-3)


@pytest.mark.parametrize("internal_batch_size", [None, 5, 12])
def test_integrated_gradients_equals_captums(internal_batch_size: int | None) -> None:
    from captum.attr import IntegratedGradients

    model, (x, target) = SmallCNN().eval(), _inputs()
    method = _method("integrated_gradients", ig_steps=16, internal_batch_size=internal_batch_size)
    maps = method.attribute(model, x, target, torch.Generator())
    expected = IntegratedGradients(model).attribute(
        x, baselines=torch.zeros_like(x), target=target, n_steps=16, method="gausslegendre"
    )
    torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-7)


def test_integrated_gradients_starts_from_black_pixels_of_the_preprocessed_input() -> None:
    """With mean/std normalization, black is -mean/std per channel, not the zero of the model input."""
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).eval()
    x, target = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    preprocessing = {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.5]}
    baselines = {
        "black": torch.tensor([-2.0, -2.0, -1.2]).view(1, 3, 1, 1).expand_as(x),
        "zero": torch.zeros_like(x),
        "mean": x.mean((2, 3), keepdim=True).expand_as(x),
    }
    for name, baseline in baselines.items():
        method = _method("integrated_gradients", ig_baseline=name, preprocessing=preprocessing)
        maps = method.attribute(model, x, target, torch.Generator())
        logits = model(torch.cat([x, baseline]))
        gap = logits[torch.arange(4), target] - logits[4 + torch.arange(4), target]
        assert torch.allclose(maps.flatten(1).sum(1), gap.detach(), atol=1e-4), name  # completeness
        assert method.parameters()["baseline"] == name


def test_smoothgrad_is_the_mean_gradient_over_seeded_noise() -> None:
    model, (x, target) = SmallCNN().eval(), _inputs()
    method = _method("smoothgrad", noise_samples=6, internal_batch_size=10)
    first = method.attribute(model, x, target, torch.Generator().manual_seed(3))
    again = method.attribute(model, x, target, torch.Generator().manual_seed(3))
    other = method.attribute(model, x, target, torch.Generator().manual_seed(4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    generator = torch.Generator().manual_seed(3)
    std = 0.15 * (x.flatten(1).max(1).values - x.flatten(1).min(1).values).view(-1, 1, 1, 1)
    noises = [torch.randn((2, *x.shape), generator=generator) for _ in range(3)]  # 10 // 5 samples per pass
    expected = torch.stack(
        [_autograd_gradient(model, x + n * std, target) for chunk in noises for n in chunk]
    ).mean(0)
    assert torch.allclose(first, expected, atol=1e-6)


def test_vargrad_is_the_population_variance_of_the_gradients_over_seeded_noise() -> None:
    model, (x, target) = SmallCNN().eval(), _inputs()
    method = _method("vargrad", noise_samples=8, internal_batch_size=15)
    maps = method.attribute(model, x, target, torch.Generator().manual_seed(5))
    assert torch.equal(maps, method.attribute(model, x, target, torch.Generator().manual_seed(5)))
    generator = torch.Generator().manual_seed(5)
    std = 0.15 * (x.flatten(1).max(1).values - x.flatten(1).min(1).values).view(-1, 1, 1, 1)
    # 15 // 5 = 3 samples per pass: passes of 3, 3 and 2 noise samples, drawn in that order
    noises = [torch.randn((count, *x.shape), generator=generator) for count in (3, 3, 2)]
    gradients = torch.stack(
        [_autograd_gradient(model, x + n * std, target) for chunk in noises for n in chunk]
    )
    assert gradients.shape == (8, *x.shape)
    expected = torch.var(gradients.double(), dim=0, unbiased=False).float()
    assert expected.sum() > 0  # the noise moves ReLUs across zero: a non-trivial variance
    assert torch.allclose(maps, expected, rtol=1e-4, atol=1e-9)
    # the sample (n - 1) variance is 8/7 of this: far outside the tolerance
    assert not torch.allclose(maps, torch.var(gradients, dim=0, unbiased=True), rtol=1e-4, atol=1e-9)


def test_building_the_test_models_leaves_the_global_rng_alone() -> None:
    state = torch.get_rng_state()
    first, second = SmallCNN(), StridedCNN()
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first.conv.weight, SmallCNN().conv.weight)
    assert torch.equal(second.fc.weight, StridedCNN().fc.weight)


def test_guided_backprop_zeroes_negative_gradients_at_relus() -> None:
    model, (x, target) = SmallCNN().eval(), _inputs()
    guided = _method("guided_backprop").attribute(model, x, target, torch.Generator())
    plain = _autograd_gradient(model, x, target)
    assert not torch.allclose(guided, plain)
    # by hand: backward through the ReLU keeps only positive gradients where the activation was positive
    x_ = x.clone().requires_grad_(True)
    hidden = model.conv(x_)
    active = hidden > 0
    upstream = torch.autograd.grad(
        model.fc(torch.relu(hidden).flatten(1))[torch.arange(5), target].sum(), hidden
    )
    guided_hidden = upstream[0].clamp_min(0) * active
    (expected,) = torch.autograd.grad(hidden, x_, guided_hidden)
    assert torch.allclose(guided, expected, atol=1e-6)


def test_guided_methods_check_only_converted_graphs() -> None:
    x, _ = _inputs()
    for name in ("guided_backprop", "guided_gradcam"):
        with pytest.raises(MethodUnsupportedError, match="only converted models"):
            _method(name, converted(SmallCNN(), x)).check_supported(FunctionalReluCNN().eval(), x[:1])
    model = converted(FunctionalReluCNN(), x)
    _method("guided_gradcam", model).check_supported(model, x[:1])  # each relu became an nn.ReLU


def test_gradcam_is_relu_of_weighted_activations_scaled_to_max_one() -> None:
    model, (x, target) = SmallCNN().eval(), _inputs()
    graph = converted(model, x)
    maps = _method("gradcam", graph).attribute(graph, x, target, torch.Generator())
    activations = torch.relu(model.conv(x)).detach().requires_grad_(True)  # read after the ReLU
    score = model.fc(activations.flatten(1))[torch.arange(5), target].sum()
    (gradient,) = torch.autograd.grad(score, activations)
    cam = torch.relu((gradient.mean(dim=(2, 3), keepdim=True) * activations).sum(1, keepdim=True)).detach()
    peak = cam.flatten(1).max(1).values.view(-1, 1, 1, 1)
    expected = torch.where(peak > 0, cam / peak, torch.zeros_like(cam))  # same size: no upsampling here
    assert maps.shape == (5, 1, 8, 8)
    assert torch.allclose(maps, expected, atol=1e-5)


def test_gradcam_upsamples_a_smaller_cam_bilinearly_then_scales_to_max_one() -> None:
    model, (x, _) = StridedCNN().eval(), _inputs()
    target = model(x).argmax(1)  # the predicted class: every CAM has a positive part
    graph = converted(model, x)
    _method("gradcam", graph).check_supported(graph, x[:1])
    maps = _method("gradcam", graph).attribute(graph, x, target, torch.Generator())
    activations = torch.relu(model.conv(x)).detach().requires_grad_(True)  # read after the ReLU
    assert activations.shape[-2:] == (4, 4)
    score = model.fc(activations.flatten(1))[torch.arange(5), target].sum()
    (gradient,) = torch.autograd.grad(score, activations)
    cam = torch.relu((gradient.mean(dim=(2, 3), keepdim=True) * activations).sum(1, keepdim=True)).detach()
    assert (cam.flatten(1).max(1).values > 0).all()

    def scaled(upsampled: torch.Tensor) -> torch.Tensor:
        return upsampled / upsampled.flatten(1).max(1).values.view(-1, 1, 1, 1)

    expected = scaled(F.interpolate(cam, size=(8, 8), mode="bilinear", align_corners=False))
    assert maps.shape == (5, 1, 8, 8)
    assert torch.allclose(maps, expected, atol=1e-5)
    assert torch.allclose(maps.flatten(1).max(1).values, torch.ones(5))
    wrong = {
        "nearest": scaled(F.interpolate(cam, size=(8, 8), mode="nearest")),
        "align_corners": scaled(F.interpolate(cam, size=(8, 8), mode="bilinear", align_corners=True)),
        "scaled before upsampling": F.interpolate(
            cam / cam.flatten(1).max(1).values.view(-1, 1, 1, 1), size=(8, 8), mode="bilinear"
        ),
    }
    for name, other in wrong.items():
        assert (maps - other).abs().max() > 1e-2, name
    nearest = _method("gradcam", graph, gradcam_upsampling="nearest")
    assert nearest.parameters()["upsampling"] == "nearest"
    assert torch.allclose(nearest.attribute(graph, x, target, torch.Generator()), wrong["nearest"], atol=1e-5)


def test_gradcam_without_a_feature_map_is_refused() -> None:
    x, _ = _inputs()
    flat = converted(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), x)
    assert choose_target(flat, x[:1], None) is None
    method = create_method("gradcam", MethodContext(AuditSettings(), None))
    with pytest.raises(MethodUnsupportedError, match="no feature map"):
        method.check_supported(flat, x[:1])


def test_guided_gradcam_is_the_product_of_its_parts() -> None:
    x, target = _inputs()
    model, generator = converted(SmallCNN(), x), torch.Generator()
    product = _method("guided_gradcam", model).attribute(model, x, target, generator)
    parts = _method("guided_backprop").attribute(model, x, target, generator) * _method(
        "gradcam", model
    ).attribute(model, x, target, generator)
    assert torch.allclose(product, parts)


def test_edge_detector_sees_a_vertical_step_and_nothing_on_flat_areas() -> None:
    image = torch.zeros(1, 1, 6, 6)
    image[..., 3:] = 1.0
    edges = sobel_magnitude(image)[0, 0]
    assert torch.equal(edges[:, [0, 1, 4, 5]], torch.zeros(6, 4))
    assert torch.allclose(edges[:, 2], torch.full((6,), 4.0)) and torch.allclose(
        edges[:, 3], torch.full((6,), 4.0)
    )
