"""Stages by block (docs/decisions/0025): segments between cut points, merged where the file names one
block, merged evenly to at most max_stages; the same stages from two exporters of one model."""

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.architectures import ARCHITECTURES, export, random_weights
from tests.conftest import TrainedDigits
from workers.engine.artifacts import load_model
from workers.engine.audit import run_audit
from workers.engine.blocks import graph_segments, named_block, stage_blocks
from workers.engine.layers import layers_in_forward_order
from workers.engine.settings import AuditSettings

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
    ("name", "block"),
    [
        ("layer1.0.conv1", "layer1.0"),
        ("layer2.0.downsample.0", "layer2.0"),
        ("features.2.conv.0.0", "features.2"),  # torchvision MobileNetV2: the inverted residual
        ("blocks.3.attn.qkv", "blocks.3"),
        ("encoder.layers.encoder_layer_2.mlp.0", "encoder.layers.encoder_layer_2"),
        ("block_13_depthwise", "block_13"),  # Keras MobileNetV2
        ("block_1_expand", "block_1"),
        ("features.0", None),  # VGG: the numbered element is the layer itself
        ("conv1", None),
        ("conv2d_1", None),
        ("Conv_1", None),
    ],
)
def test_a_layer_name_places_it_in_its_named_block(name: str, block: str | None) -> None:
    assert named_block(name) == block


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
