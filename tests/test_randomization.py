"""Layer order, seeded re-initialization, and the cascading and independent stages."""

import pytest
import torch
from torch import nn

from workers.core.audit_settings import AuditSettings, LayerOrder, ReinitScheme
from workers.core.errors import AuditInputError
from workers.engine.blocks import layer_blocks
from workers.engine.layers import layers_in_forward_order, reinitialize
from workers.engine.parameter_stages import randomized_stages


class RegisteredBackwards(nn.Module):
    """Registers its layers in the reverse of the order it runs them."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 3)
        self.middle = nn.Conv2d(4, 2, 3, padding=1)
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(torch.relu(self.middle(torch.relu(self.stem(x))))).flatten(1))


def _layers(model: nn.Module):  # type: ignore[no-untyped-def]
    return layers_in_forward_order(model, torch.zeros(1, 1, 6, 6))


def _blocks(model: nn.Module):  # type: ignore[no-untyped-def]
    return layer_blocks(_layers(model))


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in model.state_dict().items()}


def test_layers_follow_forward_execution_not_registration() -> None:
    model = RegisteredBackwards()
    layers = _layers(model)
    assert [layer.path for layer in layers] == ["stem", "middle", "head"]
    assert [layer.parameters for layer in layers] == [4 * 9 + 4, 2 * 4 * 9 + 2, 8 * 3 + 3]


def test_a_model_without_parameters_is_refused() -> None:
    with pytest.raises(AuditInputError, match="no layers with parameters"):
        layers_in_forward_order(nn.Flatten(), torch.zeros(1, 4))


def test_cascading_randomizes_from_the_top_down_and_keeps_the_trained_model() -> None:
    model = RegisteredBackwards()
    trained = _weights(model)
    stages = []
    for stage in randomized_stages(model, _blocks(model), True, AuditSettings()):
        after = stage.model.state_dict()
        changed = sorted(
            {name.split(".")[0] for name in trained if not torch.equal(trained[name], after[name])}
        )
        stages.append((stage.index, [layer.path for layer in stage.randomized], changed))
    assert stages == [
        (1, ["head"], ["head"]),
        (2, ["head", "middle"], ["head", "middle"]),
        (3, ["head", "middle", "stem"], ["head", "middle", "stem"]),
    ]
    assert all(torch.equal(trained[name], value) for name, value in model.state_dict().items())


def test_independent_randomizes_one_layer_with_the_same_weights_as_cascading() -> None:
    model = RegisteredBackwards()
    trained = _weights(model)
    blocks = _blocks(model)
    settings = AuditSettings(seed=5)
    cascade_head = next(randomized_stages(model, blocks, True, settings)).model.head
    for stage in randomized_stages(model, blocks, False, settings):
        after = stage.model.state_dict()
        changed = {name.split(".")[0] for name in trained if not torch.equal(trained[name], after[name])}
        assert changed == {stage.randomized[0].path}
        if stage.index == 1:
            assert torch.equal(stage.model.head.weight, cascade_head.weight)


def test_bottom_up_order_starts_at_the_input() -> None:
    model = RegisteredBackwards()
    settings = AuditSettings(order=LayerOrder.bottom_up)
    stages = list(randomized_stages(model, _blocks(model), True, settings))
    assert [[layer.path for layer in stage.randomized] for stage in stages] == [
        ["stem"],
        ["stem", "middle"],
        ["stem", "middle", "head"],
    ]
    assert stages[0].label == "stem and below"


def test_each_draw_draws_new_weights_and_repeats_itself() -> None:
    model = RegisteredBackwards()
    blocks = _blocks(model)

    def head(draw: int) -> torch.Tensor:
        return next(randomized_stages(model, blocks, True, AuditSettings(seed=3), draw)).model.head.weight

    assert torch.equal(head(1), head(1))
    assert not torch.equal(head(0), head(1)) and not torch.equal(head(1), head(2))


def test_reinitialization_is_seeded_and_follows_the_scheme() -> None:
    first, second = nn.Linear(200, 100), nn.Linear(200, 100)
    reinitialize(first, ReinitScheme.default, 0.01, seed=7)
    reinitialize(second, ReinitScheme.default, 0.01, seed=7)
    assert torch.equal(first.weight, second.weight)
    bound = 1 / 200**0.5  # torch's default for Linear: kaiming-uniform with a = sqrt(5)
    assert first.weight.abs().max() <= bound and first.weight.abs().max() > 0.9 * bound
    reinitialize(second, ReinitScheme.normal, 0.02, seed=7)
    assert abs(second.weight.std().item() - 0.02) < 0.002
    assert abs(second.bias.std().item() - 0.02) < 0.006


@pytest.mark.parametrize("norm", [nn.BatchNorm2d(4), nn.LayerNorm([4, 3, 3]), nn.GroupNorm(2, 4)])
def test_normalization_is_reinitialized_away_from_the_identity(norm: nn.Module) -> None:
    norm.eval()
    x = torch.randn(2, 4, 3, 3)
    reinitialize(norm, ReinitScheme.default, 0.01, seed=3)
    assert not torch.allclose(
        norm(x), nn.functional.layer_norm(x, x.shape[1:]) if isinstance(norm, nn.LayerNorm) else x
    )
    assert (norm.weight >= 0).all() and (norm.weight <= 1).all() and norm.weight.std() > 0.1
    assert torch.equal(norm.bias, torch.zeros_like(norm.bias))
