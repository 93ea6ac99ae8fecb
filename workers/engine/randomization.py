"""The model parameter randomization test's stages: cascading from the logits down, and independent."""

import copy
from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

from workers.engine.layers import Layer, layer_seed, reinitialize
from workers.engine.settings import AuditSettings, RandomizationTest


@dataclass(frozen=True)
class StageModel:
    index: int  # 1..L; stage 0 is the trained model itself
    label: str
    randomized: list[Layer]
    model: nn.Module


def randomized_stages(
    model: nn.Module, layers: list[Layer], test: RandomizationTest, settings: AuditSettings
) -> Iterator[StageModel]:
    """Yield one randomized model per stage, top (logit) layer first. The trained model is never touched.

    Cascading stages share one copy that is randomized further at each step: use a stage's model before
    asking for the next.
    """
    top_down = list(reversed(layers))
    cascade = copy.deepcopy(model) if test is RandomizationTest.cascading else None
    for index, layer in enumerate(top_down, start=1):
        target = cascade if cascade is not None else copy.deepcopy(model)
        module = dict(target.named_modules())[layer.path]
        reinitialize(module, settings.reinit, settings.reinit_std, layer_seed(settings.seed, layer))
        if test is RandomizationTest.cascading:
            yield StageModel(index, f"{layer.name} and above", top_down[:index], target)
        else:
            yield StageModel(index, f"{layer.name} only", [layer], target)
