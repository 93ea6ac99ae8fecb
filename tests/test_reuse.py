"""Stages start from the trained model's recorded forward passes: the maps are bit-identical to full
passes, the layers below the randomized ones really are skipped, and the memory budget bounds it all."""

import pytest
import torch
from torch import nn

from tests.architectures import ARCHITECTURES, IMAGE_SIZE, converted, random_weights
from workers.core.audit_settings import METHOD_NAMES, AuditSettings
from workers.engine.blocks import layer_blocks, stage_blocks
from workers.engine.budget import CPU_PASS_BYTES, CPU_PASS_FLOOR_IMAGES, DEFAULT_BATCH_SIZE, MIB, plan_memory
from workers.engine.forward_record import ForwardRecord, StageForward, first_step
from workers.engine.layers import layers_in_forward_order
from workers.engine.methods import MethodContext, create_method
from workers.engine.methods.base import SaliencyMethod
from workers.engine.onnx_import import OnnxGraphModule
from workers.engine.parameter_stages import randomized_stages

SETTINGS = AuditSettings(ig_steps=4, noise_samples=3, internal_batch_size=8)
REUSING = [name for name in METHOD_NAMES if create_method(name, MethodContext(SETTINGS)).reuses_forward]


def _model(name: str) -> tuple[OnnxGraphModule, torch.Tensor]:
    architecture = next(a for a in ARCHITECTURES if a.name == name)
    example = torch.rand(5, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    model = converted(random_weights(architecture), example[:1]).eval().requires_grad_(False)
    return model, example


def _maps(method: SaliencyMethod, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return method.attribute(model, x, target, torch.Generator().manual_seed(7))


@pytest.mark.parametrize("architecture", ["resnet", "densenet", "vit"])
def test_stage_maps_from_recorded_passes_are_bit_identical_to_full_passes(architecture: str) -> None:
    model, x = _model(architecture)
    layers = layers_in_forward_order(model, x[:1], model.layer_names)
    target = model(x).argmax(dim=1)
    blocks = stage_blocks(model, layers, SETTINGS)
    record = ForwardRecord.for_stages(model, [list(block.layers) for block in blocks], 1 << 30)
    for name in REUSING:
        method = create_method(name, MethodContext(SETTINGS))
        trained = StageForward(model, record, len(model.steps), 1 << 20, recording=True)
        assert torch.equal(_maps(method, trained, x, target), _maps(method, model, x, target)), name
        for cumulative in (True, False):
            for stage in randomized_stages(model, blocks, cumulative, SETTINGS):
                start = first_step(stage.model, stage.randomized)
                reusing = StageForward(stage.model, record, start, 1 << 20, recording=False)
                full = _maps(method, stage.model, x, target)
                assert torch.equal(_maps(method, reusing, x, target), full), (name, stage.label)
    assert record.used_bytes > 0


def test_a_stage_runs_only_the_layers_from_its_first_randomized_one() -> None:
    model, x = _model("resnet")
    layers = layers_in_forward_order(model, x[:1], model.layer_names)
    record = ForwardRecord.for_stages(model, [[layer] for layer in layers], 1 << 30)
    method = create_method("gradient", MethodContext(SETTINGS))
    target = model(x).argmax(dim=1)
    _maps(method, StageForward(model, record, len(model.steps), 0, recording=True), x, target)
    top = next(randomized_stages(model, layer_blocks(layers), True, SETTINGS))  # the logits layer alone
    calls: list[str] = []
    for layer in layers:
        module = top.model.get_submodule(layer.path)
        module.register_forward_hook(lambda *_, path=layer.path: calls.append(path))
    start = first_step(top.model, top.randomized)
    _maps(method, StageForward(top.model, record, start, 0, recording=False), x, target)
    assert calls == [layers[-1].path]


def test_gradient_x_input_reuses_the_gradient_of_the_same_stage() -> None:
    model, x = _model("resnet")
    layers = layers_in_forward_order(model, x[:1], model.layer_names)
    record = ForwardRecord.for_stages(model, [[layer] for layer in layers], 1 << 30)
    stage = StageForward(model, record, len(model.steps), 1 << 20, recording=True)
    target = model(x).argmax(dim=1)
    gradient = _maps(create_method("gradient", MethodContext(SETTINGS)), stage, x, target)
    calls: list[int] = []
    model.register_forward_hook(lambda *_: calls.append(1))
    product = _maps(create_method("gradient_x_input", MethodContext(SETTINGS)), stage, x, target)
    assert calls == []
    assert torch.equal(product, gradient * x)


def test_the_record_stops_at_its_budget_and_the_rest_is_computed_in_full() -> None:
    model, x = _model("resnet")
    layers = layers_in_forward_order(model, x[:1], model.layer_names)
    record = ForwardRecord.for_stages(
        model, [[layer] for layer in layers], budget_bytes=1
    )  # room for the first batch only
    method = create_method("integrated_gradients", MethodContext(SETTINGS))  # 4 steps, one per pass
    target = model(x).argmax(dim=1)
    trained = StageForward(model, record, len(model.steps), 0, recording=True)
    assert torch.equal(_maps(method, trained, x, target), _maps(method, model, x, target))
    assert sum(len(entries) for entries in record._entries.values()) == 1
    stage = next(randomized_stages(model, layer_blocks(layers), True, SETTINGS))
    reusing = StageForward(stage.model, record, first_step(stage.model, stage.randomized), 0, recording=False)
    assert torch.equal(_maps(method, reusing, x, target), _maps(method, stage.model, x, target))


def test_batch_sizes_follow_from_the_memory_budget() -> None:
    model, x = _model("resnet")
    cpu = torch.device("cpu")
    roomy = plan_memory(model, x, AuditSettings(memory_budget_mib=4096), cpu)
    tight = plan_memory(model, x, AuditSettings(memory_budget_mib=64), cpu)
    assert roomy.internal_batch_size == CPU_PASS_BYTES // roomy.image_bytes  # on a CPU, the caches bind
    assert roomy.batch_size == min(DEFAULT_BATCH_SIZE, roomy.internal_batch_size)
    assert tight.internal_batch_size < roomy.internal_batch_size
    assert tight.internal_batch_size * tight.image_bytes * 3 <= 0.3 * 64 * MIB
    assert tight.record_bytes == 32 * MIB
    capped = plan_memory(
        model, x, AuditSettings(memory_budget_mib=4096, batch_size=8, internal_batch_size=16), cpu
    )
    assert (capped.batch_size, capped.internal_batch_size) == (8, 16)
    large = torch.rand(2, 3, 4 * IMAGE_SIZE, 4 * IMAGE_SIZE)  # an image outgrows the caches alone
    big = plan_memory(model, large, AuditSettings(memory_budget_mib=4096), cpu)
    assert CPU_PASS_BYTES // big.image_bytes < CPU_PASS_FLOOR_IMAGES == big.internal_batch_size
    small_budget = plan_memory(model, large, AuditSettings(memory_budget_mib=64), cpu)
    assert small_budget.internal_batch_size < CPU_PASS_FLOOR_IMAGES  # the budget still binds
    applied = capped.applied(AuditSettings())
    assert (applied.batch_size, applied.internal_batch_size) == (8, 16)
