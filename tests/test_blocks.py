"""Stages by block (docs/decisions/0025): segments between cut points, merged where the file names one
block, merged evenly to at most max_stages; the same stages from two exporters of one model."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from tests.architectures import ARCHITECTURES, export, random_weights
from tests.conftest import TrainedDigits
from workers.core.audit_settings import AuditSettings
from workers.engine.artifacts import load_model
from workers.engine.audit import run_audit
from workers.engine.blocks import graph_segments, named_blocks, stage_blocks
from workers.engine.html_report import _stages
from workers.engine.layers import layers_in_forward_order

FOREIGN = Path(__file__).parent / "foreign_models"
RESNET_BLOCKS = [
    ("conv1", ["conv1"]),
    ("layer1.0", ["layer1.0.conv1", "layer1.0.conv2"]),
    ("layer2.0", ["layer2.0.downsample.0", "layer2.0.conv1", "layer2.0.conv2"]),
    ("fc", ["fc"]),
]


def _blocks(path: Path, example: torch.Tensor, **settings: object) -> list[tuple[str, list[str]]]:
    model = load_model(path).module.eval()
    layers = layers_in_forward_order(model, example, model.layer_names)
    return [
        (b.name, [y.name for y in b.layers]) for b in stage_blocks(model, layers, AuditSettings(**settings))
    ]


@pytest.fixture(scope="module")
def resnet_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    architecture = next(a for a in ARCHITECTURES if a.name == "resnet")
    model, folder = random_weights(architecture), tmp_path_factory.mktemp("resnet")
    example = torch.rand(1, 3, 32, 32)
    return {fmt: export(model, fmt, folder, example) for fmt in ("onnx_legacy", "onnx_dynamo")}


def test_a_residual_block_is_one_stage_whichever_exporter_wrote_the_file(resnet_files) -> None:
    example = torch.rand(1, 3, 32, 32)
    assert _blocks(resnet_files["onnx_legacy"], example) == RESNET_BLOCKS
    assert _blocks(resnet_files["onnx_dynamo"], example) == RESNET_BLOCKS


def test_a_plain_cnn_has_one_stage_per_layer_from_both_exporters(trained_digits: TrainedDigits) -> None:
    example = torch.from_numpy(trained_digits.data.x_test[:1])
    for path in (trained_digits.onnx_legacy, trained_digits.onnx_dynamo):
        blocks = _blocks(path, example)
        assert all(len(layers) == 1 for _, layers in blocks) and len(blocks) == 5, path.name


def test_blocks_named_by_the_file_join_segments_a_skip_connection_does_not(resnet_files) -> None:
    """The Keras MobileNet-like export: block_1 has a skip connection, one segment; block_2 has none,
    so each of its three layers is a segment of its own, and the names block_2_expand,
    block_2_depthwise, block_2_project make them one block."""
    path = FOREIGN / "keras_mobilenet_like.onnx"
    example = torch.from_numpy(np.load(FOREIGN / "keras_mobilenet_like.npz")["x"][:1]).permute(0, 3, 1, 2)
    model = load_model(path).module.eval()
    layers = layers_in_forward_order(model, example, model.layer_names)
    segments = [[y.name for y in group] for group in graph_segments(model, layers)]
    assert ["block_1_expand", "block_1_depthwise", "block_1_project"] in segments
    assert ["block_2_expand"] in segments and ["block_2_project"] in segments
    blocks = dict(_blocks(path, example))
    assert blocks["block_2"] == ["block_2_expand", "block_2_depthwise", "block_2_project"]
    assert list(blocks) == ["Conv1", "block_1", "block_2", "Conv_1", "predictions"]


def test_blocks_merge_evenly_to_at_most_max_stages_and_layers_keep_one_each(resnet_files) -> None:
    example, path = torch.rand(1, 3, 32, 32), resnet_files["onnx_legacy"]
    assert _blocks(path, example, max_stages=2) == [
        ("conv1 to layer1.0", ["conv1", "layer1.0.conv1", "layer1.0.conv2"]),
        ("layer2.0 to fc", ["layer2.0.downsample.0", "layer2.0.conv1", "layer2.0.conv2", "fc"]),
    ]
    layers = [layers for _, layers in _blocks(path, example, stages="layers")]
    assert layers == [[name] for _, names in RESNET_BLOCKS for name in names]


@pytest.mark.parametrize(
    ("names", "blocks"),
    [
        (  # torchvision MobileNetV2: the inverted residual, not its single-conv sub-sequences
            [
                "features.0.0",
                "features.1.conv.0.0",
                "features.1.conv.1",
                "features.2.conv.0.0",
                "classifier.1",
            ],
            [None, "features.1", "features.1", None, None],
        ),
        (  # timm ConvNeXt: the block, not the stage of blocks
            [
                "stem.0",
                "stages.0.blocks.0.conv_dw",
                "stages.0.blocks.0.mlp.fc1",
                "stages.0.blocks.1.conv_dw",
                "stages.0.blocks.1.mlp.fc1",
                "head.fc",
            ],
            [None, "stages.0.blocks.0", "stages.0.blocks.0", "stages.0.blocks.1", "stages.0.blocks.1", None],
        ),
        (  # torchvision ViT
            [
                "conv_proj",
                "encoder.layers.encoder_layer_0.ln_1",
                "encoder.layers.encoder_layer_0.mlp.0",
                "heads.head",
            ],
            [None, "encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_0", None],
        ),
        (["1.0", "1.2", "1.5"], [None, None, None]),  # Sequential(normalize, net): one scope holds all
        (["features.0", "features.2", "classifier.0"], [None, None, None]),  # VGG: each is the layer
        (
            ["Conv1", "block_1_expand", "block_1_project", "conv2d_1", "Conv_1"],
            [None, "block_1", "block_1", None, None],
        ),
    ],
    ids=["mobilenet_v2", "convnext", "vit", "wrapped", "vgg", "keras"],
)
def test_layer_names_place_layers_in_the_innermost_block_that_holds_more_than_one(
    names: list[str], blocks: list[str | None]
) -> None:
    assert named_blocks(names) == blocks


def test_a_model_wrapped_in_a_numbered_container_keeps_its_stages(resnet_files, tmp_path: Path) -> None:
    """Normalization shipped inside the model, Sequential(normalize, net): every layer name starts with
    ``1.``, which names no block; the residual blocks inside still do."""
    architecture = next(a for a in ARCHITECTURES if a.name == "resnet")
    wrapped = torch.nn.Sequential(torch.nn.Identity(), random_weights(architecture)).eval()
    path = export(wrapped, "onnx_legacy", tmp_path, torch.rand(1, 3, 32, 32))
    assert [name for name, _ in _blocks(path, torch.rand(1, 3, 32, 32))] == [
        "1.conv1", "1.layer1.0", "1.layer2.0", "1.fc"
    ]  # fmt: skip


def test_an_audit_randomizes_a_block_per_stage_and_lists_its_layers(resnet_files, tmp_path: Path) -> None:
    probes = tmp_path / "probes.npy"
    np.save(probes, np.random.default_rng(0).random((6, 3, 32, 32), dtype=np.float32))
    settings = AuditSettings(methods=["gradient"], tests=["independent"], draws=1, max_draws=1)
    report = run_audit(resnet_files["onnx_legacy"], probes, settings, tmp_path / "out")
    stages = report.methods[0].tests[0].stages[1:]
    assert [(s.label, s.randomized_layers) for s in stages] == [
        (f"{name} only", layers) for name, layers in reversed(RESNET_BLOCKS)
    ]
    assert report.settings.stages.value == "blocks"
    assert _stages(report) == [
        (
            "stages (blocks)",
            "4, in the order walked: fc (1 layer), layer2.0 (3 layers), layer1.0 (2 layers), conv1 (1 layer)",
        )
    ]  # the page's provenance row


def _shape_read_late() -> onnx.ModelProto:
    """conv1 -> relu -> conv2 -> relu -> fc, where fc's Reshape takes its batch size from the Shape of
    the input: the input is read at the end, for its shape only."""
    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Shape", ["x"], ["s"], start=0, end=1),
        helper.make_node("Concat", ["s", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["r2", "target"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w3", "b3"], ["logits"], transB=1, name="fc"),
    ]
    initializers = [
        weight("w1", 4, 3, 3, 3), weight("b1", 4), weight("w2", 4, 4, 3, 3), weight("b2", 4),
        weight("w3", 3, 64), weight("b3", 3),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus_one"),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "shape_read_late",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", 3])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_value_read_only_for_its_shape_does_not_join_layers(tmp_path: Path) -> None:
    path = tmp_path / "shape_read_late.onnx"
    onnx.save(_shape_read_late(), path)
    blocks = _blocks(path, torch.rand(1, 3, 8, 8))
    assert [layers for _, layers in blocks] == [["conv1"], ["conv2"], ["fc"]]
