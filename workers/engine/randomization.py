"""The model parameter randomization test's stages: cascading (cumulative) and independent (one layer)."""

import copy
from collections.abc import Iterator
from dataclasses import dataclass

from torch import Tensor, nn

from workers.engine.layers import Layer, layer_seed, reinitialize
from workers.engine.settings import AuditSettings, LayerOrder


@dataclass(frozen=True)
class Smoothing:
    """Maps averaged over noisy copies of the inputs (smooth MPRT): ``samples`` copies with noise of std
    ``level`` x (max - min) of each image, drawn from ``seed``: the same copies at every stage."""

    samples: int
    level: float
    seed: int


@dataclass(frozen=True)
class StageModel:
    index: int  # 1..L; stage 0 is the trained model itself
    label: str
    randomized: list[Layer]
    model: nn.Module
    archive_name: str  # the map file's name in maps.zip, without the suffix
    # what the methods see at this stage where it is not the audit's own (input invariance: the shifted
    # probes and the settings whose black moved with them; random logit: other classes to explain)
    inputs: Tensor | None = None
    targets: Tensor | None = None
    settings: AuditSettings | None = None
    note: str | None = None  # what the report should say of how this stage was built
    smoothing: Smoothing | None = None


def walk_order(layers: list[Layer], order: LayerOrder) -> list[Layer]:
    """Top-down starts at the logits, as the paper did; bottom-up at the input."""
    return list(reversed(layers)) if order is LayerOrder.top_down else list(layers)


def randomized_stages(
    model: nn.Module,
    layers: list[Layer],
    cumulative: bool,
    settings: AuditSettings,
    draw: int = 0,
    smoothing: Smoothing | None = None,
) -> Iterator[StageModel]:
    """Yield one randomized model per stage in ``settings.order``. The trained model is never touched.

    Draw ``draw`` seeds every layer's new weights apart from other draws; within a draw a layer gets the
    same new weights in the cumulative and the independent test. Cumulative stages share one copy that is
    randomized further at each step: use a stage's model before asking for the next.
    """
    walk = walk_order(layers, settings.order)
    cascade = copy.deepcopy(model) if cumulative else None
    for index, layer in enumerate(walk, start=1):
        target = cascade if cascade is not None else copy.deepcopy(model)
        module = dict(target.named_modules())[layer.path]
        reinitialize(module, settings.reinit, settings.reinit_std, layer_seed(settings.seed, layer, draw))
        if cumulative:
            direction = "above" if settings.order is LayerOrder.top_down else "below"
            label, randomized = f"{layer.name} and {direction}", walk[:index]
        else:
            label, randomized = f"{layer.name} only", [layer]
        yield StageModel(index, label, randomized, target, f"{index:02d}", smoothing=smoothing)
