"""The model parameter randomization test's stages: cascading (cumulative) and independent (one block)."""

import copy
from collections.abc import Iterator
from dataclasses import dataclass

from torch import Tensor, nn

from workers.core.audit_settings import AuditSettings, LayerOrder
from workers.engine.blocks import Block
from workers.engine.layers import Layer, layer_seed, reinitialize


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


def walk_order(blocks: list[Block], order: LayerOrder) -> list[Block]:
    """Top-down starts at the logits, as the paper did; bottom-up at the input."""
    return list(reversed(blocks)) if order is LayerOrder.top_down else list(blocks)


def randomized_stages(
    model: nn.Module,
    blocks: list[Block],
    cumulative: bool,
    settings: AuditSettings,
    draw: int = 0,
    smoothing: Smoothing | None = None,
) -> Iterator[StageModel]:
    """Yield one randomized model per stage, a block per stage (``blocks.stage_blocks``), in
    ``settings.order``. The trained model is never touched.

    Draw ``draw`` seeds every layer's new weights apart from other draws; within a draw a layer gets the
    same new weights in the cumulative and the independent test, whatever block it is in. Cumulative
    stages share one copy that is randomized further at each step: use a stage's model before asking for
    the next.
    """
    walk = walk_order(blocks, settings.order)
    cascade = copy.deepcopy(model) if cumulative else None
    for index, block in enumerate(walk, start=1):
        target = cascade if cascade is not None else copy.deepcopy(model)
        modules = dict(target.named_modules())
        for layer in block.layers:
            seed = layer_seed(settings.seed, layer, draw)
            reinitialize(modules[layer.path], settings.reinit, settings.reinit_std, seed)
        if cumulative:
            direction = "above" if settings.order is LayerOrder.top_down else "below"
            label = f"{block.name} and {direction}"
            randomized = [layer for walked in walk[:index] for layer in walked.layers]
        else:
            label, randomized = f"{block.name} only", list(block.layers)
        yield StageModel(index, label, randomized, target, f"{index:02d}", smoothing=smoothing)
