"""GradCAM reads the conventional layer: the last block's output, not the last Conv2d to run."""

import pytest
import torch

from tests.architectures import ARCHITECTURES, IMAGE_SIZE, converted, random_weights
from workers.engine.errors import AuditInputError
from workers.engine.gradcam_target import as_feature_map, choose_target

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
