"""GradCAM reads the conventional layer: the last block's output, not the last Conv2d to run."""

import pytest
import torch

from tests.architectures import ARCHITECTURES, IMAGE_SIZE, converted, random_weights
from workers.core.errors import AuditInputError
from workers.engine.methods.gradcam_target import as_feature_map, choose_target

X = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))


def _graph(name: str):  # type: ignore[no-untyped-def]
    return converted(random_weights(next(a for a in ARCHITECTURES if a.name == name)), X)


def test_a_residual_net_is_read_after_its_last_add_and_relu_not_at_its_last_conv() -> None:
    graph = _graph("resnet")
    target = choose_target(graph, X[:1], None)
    step = graph.producer(target.value)
    assert step.op_type == "Relu" and graph.producer(step.inputs[0]).op_type == "Add"
    assert target.label.startswith("layer2.0") and "last feature map" in target.reason
    last_conv = [step for step in graph.steps_to_output() if step.op_type == "Conv"][-1]
    assert target.value not in last_conv.outputs


def test_any_module_of_the_source_model_can_be_chosen_by_its_path() -> None:
    graph = _graph("resnet")
    shortcut = choose_target(graph, X[:1], "layer2.0.downsample")
    assert graph.producer(shortcut.value).op_type == "Conv" and "module output" in shortcut.label
    by_value = choose_target(graph, X[:1], "/layer1/layer1.0/Add_output_0")
    assert graph.producer(by_value.value).op_type == "Add"


def test_an_unknown_layer_or_one_without_a_map_is_refused_with_the_modules_listed() -> None:
    graph = _graph("resnet")
    with pytest.raises(AuditInputError, match=r"not a module, layer or value of the model .*layer2\.0"):
        choose_target(graph, X[:1], "layer9")
    with pytest.raises(AuditInputError, match=r"outputs \[1, 5\]"):
        choose_target(graph, X[:1], "fc")


def test_a_vit_is_read_on_its_last_residual_stream_as_a_patch_grid_without_the_class_token() -> None:
    graph = _graph("vit")
    target = choose_target(graph, X[:1], None)
    assert graph.producer(target.value).op_type == "Add"
    assert target.grid == (4, 4) and target.class_tokens == 1 and "class token dropped" in target.reason
    tokens = torch.arange(2 * 17 * 3, dtype=torch.float32).reshape(2, 17, 3)
    grid = as_feature_map(target, tokens)
    assert grid.shape == (2, 3, 4, 4) and torch.equal(grid[:, :, 0, 1], tokens[:, 2, :])


class _EndsMovingAxes(torch.nn.Module):
    """A feature extractor whose last 4-D value is not a feature map: the features moved to channels-last
    (as tf2onnx and jax2onnx graphs end), padded, or reshaped, before the head."""

    def __init__(self, ending: str) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 6, 3, padding=1)
        self.head = torch.nn.Linear(6 * 8 * 8, 5)
        self.ending = ending

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        features = torch.nn.functional.max_pool2d(features, 2)
        if self.ending == "transpose":
            features = features.permute(0, 2, 3, 1)
        elif self.ending == "pad":
            features = torch.nn.functional.pad(features, (0, 1, 0, 1))[:, :, :8, :8]
        else:
            features = features.reshape(features.shape[0], 6, 4, 16)
        return self.head(features.flatten(1))


@pytest.mark.parametrize("ending", ["transpose", "pad", "reshape"])
def test_the_default_gradcam_target_is_a_feature_map_never_a_moved_padded_or_reshaped_value(
    ending: str,
) -> None:
    example = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    graph = converted(_EndsMovingAxes(ending).eval(), example)
    target = choose_target(graph, example[:1], None)
    step = graph.producer(target.value)
    assert step.op_type == "Relu" and graph.producer(step.inputs[0]).op_type == "Conv"
    assert target.layout == "NCHW" and target.is_feature_map
    shapes = graph.value_shapes(example[:1])
    last_4d = [s for s in graph.steps_to_output() if len(shapes.get(s.outputs[0], ())) == 4][-1]
    assert last_4d.op_type in ("Transpose", "Pad", "Slice", "Reshape") and target.value not in last_4d.outputs


def test_a_requested_value_whose_axes_are_unknown_is_refused_and_a_moved_one_read_channels_first() -> None:
    example = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    reshaped = converted(_EndsMovingAxes("reshape").eval(), example)
    value = next(s.outputs[0] for s in reshaped.steps if s.op_type == "Reshape")
    with pytest.raises(AuditInputError, match="made by a Reshape node, whose axes the graph does not make"):
        choose_target(reshaped, example[:1], value)
    moved = converted(_EndsMovingAxes("transpose").eval(), example)
    transposed = next(s.outputs[0] for s in moved.steps if s.op_type == "Transpose")
    target = choose_target(moved, example[:1], transposed)
    assert target.layout == "NHWC"
    nhwc = torch.rand(2, 4, 4, 6)
    assert torch.equal(as_feature_map(target, nhwc), nhwc.permute(0, 3, 1, 2))


def test_gradcam_refuses_a_target_not_known_to_be_a_feature_map() -> None:
    from workers.core.audit_settings import AuditSettings
    from workers.engine.methods import MethodContext, create_method
    from workers.engine.methods.gradcam_target import GradCamTarget

    graph = _graph("resnet")
    value = choose_target(graph, X[:1], None).value
    for layout in (None, "NCW"):
        unknown = GradCamTarget(value, "a 4-D value", "test", layout=layout)
        method = create_method("gradcam", MethodContext(AuditSettings(), unknown))
        with pytest.raises(AuditInputError, match="not known to be a feature map"):
            method.check_supported(graph, X[:1])


class _GroupNormHead(torch.nn.Module):
    """Conv, GroupNorm, ReLU, pooling: torch exports the GroupNorm as Reshape, InstanceNormalization,
    Reshape back, Mul and Add; the block's output is still the ReLU after it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.norm = torch.nn.GroupNorm(2, 8)
        self.head = torch.nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.norm(self.conv2(torch.relu(self.conv1(x)))))
        return self.head(features.mean((2, 3)))


def test_a_groupnorm_spelled_with_reshapes_keeps_the_block_output_as_the_default_target() -> None:
    example = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    graph = converted(_GroupNormHead().eval(), example)
    target = choose_target(graph, example[:1], None)
    step = graph.producer(target.value)
    assert step.op_type == "Relu" and target.layout == "NCHW"
    assert any(s.op_type == "Reshape" for s in graph.steps)  # the export did spell it with reshapes


class _SmallInputMobileNet(torch.nn.Module):
    """MobileNetV2's tail at an input so small that its last stage is 1x1: a residual block at 2x2, then the
    next block's expansion at 2x2, padded and convolved with stride 2 to 1x1."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.block = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.expand = torch.nn.Conv2d(8, 16, 1)
        self.depthwise = torch.nn.Conv2d(16, 16, 3, stride=2, groups=16)
        self.project = torch.nn.Conv2d(16, 8, 1)
        self.head = torch.nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = x + self.block(x)
        y = torch.nn.functional.relu6(self.expand(x))
        y = torch.nn.functional.relu6(self.depthwise(torch.nn.functional.pad(y, (0, 1, 0, 1))))
        return self.head(self.project(y).flatten(1))


def test_when_the_last_stage_is_1x1_the_default_is_the_last_residual_block_with_positions() -> None:
    example = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    graph = converted(_SmallInputMobileNet().eval(), example)
    target = choose_target(graph, example[:1], None)
    assert graph.producer(target.value).op_type == "Add" and "1x1" in target.reason
    assert graph.value_shapes(example[:1])[target.value] == (1, 8, 2, 2)
