"""Input invariance (Kindermans et al. 2019): a constant shift of the inputs, absorbed by the first bias,
leaves Gradient's maps alone and changes Gradient x Input's; Integrated Gradients is invariant only from a
baseline that moves with the shift (docs/decisions/0023)."""

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

from tests.conftest import TrainedDigits
from workers.core.audit_settings import AuditSettings, IgBaseline, Outcome, Preprocessing
from workers.core.errors import AuditInputError
from workers.core.summary import format_summary
from workers.engine.artifacts import load_model
from workers.engine.audit import run_audit
from workers.engine.checks import CheckContext
from workers.engine.checks.invariance import (
    RELATIVE_L2,
    InputInvariance,
    channel_shift,
    relative_l2,
    shifted_model,
    shifted_settings,
)
from workers.engine.layers import layers_in_forward_order
from workers.engine.methods import MethodContext, create_method


def _outcomes(report) -> dict[str, Outcome]:
    return {m.name: m.tests[0].verdict.outcome for m in report.methods if m.tests[0].verdict is not None}


def _differences(report) -> dict[str, float]:
    return {m.name: m.tests[0].stages[-1].measures[RELATIVE_L2].mean for m in report.methods}


@pytest.fixture(scope="module")
def invariance_audit(trained_digits: TrainedDigits, tmp_path_factory: pytest.TempPathFactory):
    settings = AuditSettings(
        methods=["gradient", "gradient_x_input", "integrated_gradients", "guided_backprop", "gradcam"],
        tests=["input_invariance"],
        ig_steps=16,
        batch_size=16,
    )
    out = tmp_path_factory.mktemp("invariance")
    return run_audit(trained_digits.onnx_dynamo, trained_digits.probes, settings, out)


def test_gradient_passes_and_gradient_x_input_fails_input_invariance(invariance_audit) -> None:
    outcomes, differences = _outcomes(invariance_audit), _differences(invariance_audit)
    assert outcomes["gradient"] is Outcome.passed
    assert outcomes["gradient_x_input"] is Outcome.failed
    assert differences["gradient"] < 1e-4  # the same map up to float32 rounding
    assert differences["gradient_x_input"] > 0.5  # g x (x + m) - g x x = g x m: as large as the map itself


def test_methods_that_read_only_the_models_function_are_input_invariant(invariance_audit) -> None:
    """Guided Backprop and GradCAM see the same activations after the first layer: the same maps. So does
    Integrated Gradients from the black baseline, which is pixel value 0 preprocessed and so moves with
    the shift (here the probes are not normalized: black is 0 before the shift, m after it)."""
    outcomes, differences = _outcomes(invariance_audit), _differences(invariance_audit)
    for name in ("guided_backprop", "gradcam", "integrated_gradients"):
        assert outcomes[name] is Outcome.passed, name
        assert differences[name] < 1e-4, name


def test_integrated_gradients_fails_from_a_zero_baseline_that_stays_put(
    trained_digits: TrainedDigits, tmp_path: Path
) -> None:
    settings = AuditSettings(
        methods=["integrated_gradients"],
        tests=["input_invariance"],
        ig_steps=16,
        ig_baseline="zero",
        batch_size=16,
    )
    report = run_audit(trained_digits.onnx_legacy, trained_digits.probes, settings, tmp_path)
    assert _outcomes(report)["integrated_gradients"] is Outcome.failed
    assert _differences(report)["integrated_gradients"] > 0.5


def test_report_says_how_the_shifted_model_was_built_and_the_summary_shows_the_test(
    invariance_audit,
) -> None:
    result = invariance_audit.methods[0].tests[0]
    assert result.order is None and result.draws == 1
    shifted = result.stages[-1]
    assert "shifted zero" in shifted.note and "max |logit diff|" in shifted.note
    assert shifted.randomized_layers == []  # the shifted model is the same function: nothing randomized
    verdict = result.verdict
    assert verdict.metric is None and "relative L2" in verdict.statistic and verdict.limit == 0.01
    summary = format_summary(invariance_audit)
    assert "input invariance: relative L2 difference" in summary
    assert "Input invariance PASSES when" in summary


def _digits_context(trained_digits: TrainedDigits, model: nn.Module, **settings: object) -> CheckContext:
    x = torch.from_numpy(trained_digits.data.x_test[:16])
    layers = layers_in_forward_order(model, x[:1])
    return CheckContext(model.eval(), layers, AuditSettings(**settings), inputs=x)


def test_zero_padding_is_kept_invariant_by_padding_with_the_shifted_zero(
    trained_digits: TrainedDigits,
) -> None:
    """The digits CNN 'same'-pads conv1. Shifting the bias alone leaves the padded zeros at -m in the
    original's terms, and the logits move by whole units; padding with the shifted zero keeps them."""
    model = copy.deepcopy(trained_digits.model).eval()
    x = torch.from_numpy(trained_digits.data.x_test[:48])
    m = channel_shift(x, -1.0)
    layers = layers_in_forward_order(model, x[:1])
    shifted, note = shifted_model(model, layers[0], x, m)
    naive = copy.deepcopy(model)
    with torch.no_grad():
        naive.conv1.bias -= naive.conv1.weight.sum(dim=(1, 2, 3)) * m
        original, kept, broken = model(x), shifted(x + m.view(1, -1, 1, 1)), naive(x + m.view(1, -1, 1, 1))
    assert float((kept - original).abs().max()) < 1e-4
    assert float((broken - original).abs().max()) > 1.0
    assert "shifted zero" in note
    assert trained_digits.model.conv1.padding == (1, 1)  # the audited model is never changed


def test_a_first_linear_layer_absorbs_the_shift_in_its_bias() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.rand(6, 2, 4, 4)
    m = channel_shift(x, 0.5)
    layers = layers_in_forward_order(model, x[:1])
    shifted, _ = shifted_model(model, layers[0], x, m)
    with torch.no_grad():
        difference = (shifted(x + m.view(1, -1, 1, 1)) - model(x)).abs().max()
    assert float(difference) < 1e-5


class _BeforeTheFirstLayer(nn.Module):
    """Something between the image and the first conv: ``before(x)`` is what the conv reads."""

    def __init__(self, inner: nn.Module, before) -> None:
        super().__init__()
        self.inner, self.before = inner, before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(self.before(x))


def test_normalization_inside_the_graph_is_measured_and_absorbed(trained_digits: TrainedDigits) -> None:
    """The first conv reads (x - 0.5) / 0.25: the shift it receives is 4 m, which its bias absorbs."""
    model = _BeforeTheFirstLayer(copy.deepcopy(trained_digits.model), lambda x: (x - 0.5) / 0.25)
    check = InputInvariance(_digits_context(trained_digits, model))
    assert check.logit_difference < 1e-4
    conv = check.model.inner.conv1
    expected = (
        trained_digits.model.conv1.bias - trained_digits.model.conv1.weight.sum(dim=(1, 2, 3)) * 4 * -1.0
    )
    assert torch.allclose(conv.bias, expected, atol=1e-5)  # digits lie in [0, 1]: m = -1


def test_a_shift_that_differs_between_positions_refuses_the_test(trained_digits: TrainedDigits) -> None:
    """A mask before the first layer lets only part of the shift through: no bias can absorb it."""
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :8] = 1.0
    model = _BeforeTheFirstLayer(copy.deepcopy(trained_digits.model), lambda x: x * mask)
    with pytest.raises(AuditInputError, match="varies across positions"):
        InputInvariance(_digits_context(trained_digits, model))


def test_a_torch_pad_module_before_the_first_convolution_refuses_the_test() -> None:
    """A torch ZeroPad2d pads x + m with zeros: the conv's input is shifted inside and not at the border
    (ONNX graphs' Pad steps are shifted instead: below)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(1, 4, 2), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3)
    )
    x = torch.rand(6, 1, 8, 8)
    model(x)  # materializes the lazy layer
    context = CheckContext(model.eval(), layers_in_forward_order(model, x[:1]), AuditSettings(), inputs=x)
    with pytest.raises(AuditInputError, match=r"varies across positions.*a constant pad"):
        InputInvariance(context)


@pytest.mark.parametrize(
    ("export", "how"),
    [
        ("keras_mobilenet_like", "the padding before Conv1 (a Pad step) pads with its constant plus"),
        ("keras_cnn_nhwc", "bias of conv2d_1 less W d"),
        ("flax_cnn", "node_Conv_1 zero-pads its input"),
        ("paddle_mobilenet_like", "conv2d_0 zero-pads its input"),
    ],
)
def test_exports_of_keras_flax_and_paddle_keep_gradient_maps_under_the_shift(export: str, how: str) -> None:
    """Real exports (tests/foreign_models): a strided 'same' first convolution of Keras comes as a Pad
    step before a convolution that pads nothing; channels-last graphs; Flax's and Paddle's padded convs.
    The shifted model gives the same logits and the same input gradients on the shifted probes."""
    folder = Path(__file__).parent / "foreign_models"
    model = load_model(folder / f"{export}.onnx").module.eval().requires_grad_(False)
    with np.load(folder / f"{export}.npz") as arrays:
        x = torch.from_numpy(arrays["x"][:8].astype(np.float32))
    if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2).contiguous()  # the converted graph takes [N, C, H, W]
    layers = layers_in_forward_order(model, x[:1], model.layer_names)
    check = InputInvariance(CheckContext(model, layers, AuditSettings(), inputs=x))
    assert how in check.note and check.logit_difference < 1e-4
    (stage,) = check.stage_models(0)
    original, shifted = (
        _input_gradient(net, inputs) for net, inputs in ((model, x), (stage.model, stage.inputs))
    )
    assert float((shifted - original).norm() / original.norm()) < 1e-4


def _input_gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    leaf = x.clone().requires_grad_(True)
    logits = model(leaf)
    logits.gather(1, logits.argmax(dim=1, keepdim=True)).sum().backward()
    return leaf.grad


def test_the_check_accepts_the_digits_cnn_and_records_the_logit_difference(
    trained_digits: TrainedDigits,
) -> None:
    check = InputInvariance(_digits_context(trained_digits, copy.deepcopy(trained_digits.model)))
    assert check.logit_difference < 1e-4
    (stage,) = check.stage_models(0)
    assert torch.equal(stage.inputs, check.context.inputs - 1.0)  # digits lie in [0, 1]: m = -1


def test_the_black_baseline_moves_with_the_shift_and_the_zero_baseline_does_not() -> None:
    x = torch.rand(2, 3, 5, 5)
    m = torch.tensor([0.5, -1.0, 2.0])
    settings = AuditSettings(preprocessing=Preprocessing(mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3]))
    for baseline, moves in ((IgBaseline.black, True), (IgBaseline.zero, False)):
        before = settings.model_copy(update={"ig_baseline": baseline})
        after = shifted_settings(before, m)
        method, moved = (create_method("integrated_gradients", MethodContext(s)) for s in (before, after))
        expected = method.baseline(x) + (m.view(1, -1, 1, 1) if moves else 0)
        assert torch.allclose(moved.baseline(x + m.view(1, -1, 1, 1)), expected, atol=1e-6), baseline


def test_relative_l2_fails_a_zero_reference_map_that_turns_non_zero() -> None:
    reference = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 0.0]]).view(4, 1, 1, 2)
    other = torch.tensor([[1.0, 1.0], [3.0, 4.0], [0.0, 0.0], [torch.inf, 0.0]]).view(4, 1, 1, 2)
    values = relative_l2(reference, other)
    assert values[0] == pytest.approx(1.0)
    assert values[1] == 1.0  # a real change: the whole shifted map, a finite failure the mean keeps
    assert values[2] != values[2] and values[3] != values[3]  # NaN: both zero, or not finite


@pytest.mark.parametrize(
    "first",
    [
        nn.Conv2d(4, 6, 3, padding="same", groups=2),
        nn.Conv2d(4, 6, 3, stride=2, padding=(1, 2), bias=False),
        nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"),
    ],
    ids=["same-grouped", "strided-no-bias", "reflect"],
)
def test_grouped_strided_and_unbiased_convolutions_absorb_the_shift(first: nn.Conv2d) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(first, nn.ReLU(), nn.Flatten(), nn.LazyLinear(3)).eval()
    x = torch.rand(5, 4, 9, 9)
    model(x)  # materializes the lazy layer
    m = torch.tensor([0.5, -1.0, 2.0, 0.25])
    layers = layers_in_forward_order(model, x[:1])
    shifted, _ = shifted_model(model, layers[0], x, m)
    with torch.no_grad():
        difference = (shifted(x + m.view(1, -1, 1, 1)) - model(x)).abs().max()
    assert float(difference) < 1e-5


def _channels_last_pad_then_conv() -> onnx.ModelProto:
    """A grayscale channels-last graph that pads in NHWC, then moves to NCHW for its convolution."""
    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.standard_normal((4, 1, 3, 3)), "b1": rng.standard_normal(4),
        "w2": rng.standard_normal((3, 4 * 7 * 7)), "b2": rng.standard_normal(3),
    }  # fmt: skip
    initializers = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
    initializers.append(numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 1, 1, 0], dtype=np.int64), "pads"))
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["padded"], mode="constant"),
        helper.make_node("Transpose", ["padded"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w1", "b1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Flatten", ["r1"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w2", "b2"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "nhwc_pad",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 8, 8, 1])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", 3])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_pad_step_of_a_channels_last_graph_pads_with_the_shift(tmp_path: Path) -> None:
    """The shift of a grayscale image is one value: it follows a Pad step whatever axes it pads."""
    path = tmp_path / "nhwc_pad.onnx"
    onnx.save(_channels_last_pad_then_conv(), path)
    model = load_model(path).module.eval().requires_grad_(False)
    x = torch.rand(6, 1, 8, 8)  # the converted graph takes [N, C, H, W]
    layers = layers_in_forward_order(model, x[:1], model.layer_names)
    check = InputInvariance(CheckContext(model, layers, AuditSettings(), inputs=x))
    assert "pads with its constant plus the shift" in check.note and check.logit_difference < 1e-4
