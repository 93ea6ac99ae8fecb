"""Parts of maps computed once for every method made of them (``SaliencyMethod.parts``).

A stage's methods run one after another on the same model, inputs and classes, so the latest computation
of each part is the one the next method needs: one computation per part is kept, and memory holds at
most one set of each part's values. A part is the same computation only for the same model, inputs,
classes, noise seed, batching and method settings; anything else computes it anew. The audit makes the
cache forget when a stage begins: a cascade randomizes one copy of the model in place, so the same object
is another model at the next stage.
"""

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from workers.engine.methods.base import MethodContext, PartFn

PartValues = list[Tensor | tuple[Tensor, ...]]  # one per batch, in order


@dataclass
class _Computed:
    model: nn.Module
    inputs: Tensor
    targets: Tensor
    seed: int
    batch: int
    context: MethodContext
    values: PartValues

    def serves(
        self, model: nn.Module, inputs: Tensor, targets: Tensor, seed: int, batch: int, context: MethodContext
    ) -> bool:
        return (
            self.model is model
            and self.inputs is inputs
            and (self.targets is targets or torch.equal(self.targets, targets))
            and (self.seed, self.batch, self.context) == (seed, batch, context)
        )


class SharedParts:
    def __init__(self) -> None:
        self._latest: dict[str, _Computed] = {}

    def forget(self) -> None:
        self._latest.clear()

    def values(
        self,
        key: str,
        compute: PartFn,
        context: MethodContext,
        model: nn.Module,
        inputs: Tensor,
        targets: Tensor,
        seed: int,
        batch: int,
    ) -> PartValues:
        """Part ``key`` of every batch of ``inputs``, computed now or by an earlier method. Its noise comes
        from a generator seeded with ``seed`` and drawn through the batches in order, as a method alone
        would draw it."""
        latest = self._latest.get(key)
        if latest is None or not latest.serves(model, inputs, targets, seed, batch, context):
            generator = torch.Generator().manual_seed(seed)
            values = [
                compute(model, inputs[i : i + batch], targets[i : i + batch], generator)
                for i in range(0, len(inputs), batch)
            ]
            latest = _Computed(model, inputs, targets, seed, batch, context, values)
            self._latest[key] = latest
        return latest.values
