"""Forward work the randomization stages need not repeat.

In a cascading (top-down) or independent stage, every step of the graph before the first randomized layer
computes exactly what the trained model computed on the same input. The trained model's forward pass on
each input batch (the probes, Integrated Gradients' scaled images, the noisy copies) is recorded once,
with its autograd graph; a stage's model starts from the recorded values at its first randomized step, and
its backward pass goes on through the recorded graph, which is kept for the next stage. The arithmetic is
the same as a full pass, so the maps are bit-identical to the uncached path (tests/test_reuse.py).

Within one stage, a gradient asked for twice (Gradient, then Gradient x Input on the same images) is
computed once. Both stores are bounded in bytes; inputs beyond the bound are simply computed in full.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from workers.engine.layers import Layer
from workers.engine.onnx_import import OnnxGraphModule

Key = tuple[tuple[int, ...], torch.dtype, torch.device, float]


def _key(inputs: Tensor) -> Key:
    """Where to look for a batch; equal batches have equal keys, and a hit is confirmed by equality."""
    return tuple(inputs.shape), inputs.dtype, inputs.device, float(inputs.detach().double().sum())


def _nbytes(values: Iterable[Tensor]) -> int:
    return sum(value.numel() * value.element_size() for value in values)


def recorded_forward(model: OnnxGraphModule, inputs: Tensor) -> tuple[Tensor, dict[str, Tensor], int]:
    """A forward pass on a copy of ``inputs`` that keeps its autograd graph: the copy (the graph's leaf),
    every value the graph computed, and their bytes (constants excluded)."""
    leaf = inputs.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        env = model.evaluate_from({model.input_name: leaf}, 0, None)
    return leaf, env, _nbytes(value for name, value in env.items() if name not in model.constant_buffers)


@dataclass
class _Recorded:
    leaf: Tensor  # the input the recorded graph starts from: a copy of the batch, to recognize it
    values: dict[str, Tensor]  # the values stages start from, with their graph


class _FromRecord(torch.autograd.Function):
    """The recorded values as a function of the stage's input: backward runs the recorded graph."""

    @staticmethod
    def forward(ctx, inputs: Tensor, recorded: _Recorded, names: tuple[str, ...]):  # type: ignore[override]
        ctx.recorded, ctx.names = recorded, names
        outputs = tuple(recorded.values[name].detach() for name in names)
        ctx.mark_non_differentiable(*(value for value in outputs if not value.is_floating_point()))
        return outputs

    @staticmethod
    def backward(ctx, *gradients: Tensor | None):  # type: ignore[override]
        values = [ctx.recorded.values[name] for name in ctx.names]
        pairs = [(v, g) for v, g in zip(values, gradients, strict=True) if g is not None and v.requires_grad]
        if not pairs:
            return None, None, None
        outputs, grad_outputs = zip(*pairs, strict=True)
        (gradient,) = torch.autograd.grad(outputs, ctx.recorded.leaf, grad_outputs, retain_graph=True)
        return gradient, None, None


@dataclass
class ForwardRecord:
    """The trained model's forward passes, by input batch, for the stages that start at ``starts``."""

    trained: OnnxGraphModule
    starts: set[int]
    budget_bytes: int
    used_bytes: int = 0
    _entries: dict[Key, list[_Recorded]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.starts = {*self.starts, len(self.trained.steps)}
        self._crossing = {start: self.trained.crossing_values(start) for start in self.starts}
        self._kept = {name for names in self._crossing.values() for name in names}

    @classmethod
    def for_stages(
        cls, trained: OnnxGraphModule, stages: list[list[Layer]], budget_bytes: int
    ) -> "ForwardRecord":
        """A record for stages that randomize these groups of layers (a block each, or a layer): a stage
        starts at the first step of its group's earliest layer, and a cascade's stage at its lowest
        group's."""
        return cls(trained, {first_step(trained, group) for group in stages}, budget_bytes)

    def forward(self, model: OnnxGraphModule, inputs: Tensor, start: int, record: bool) -> Tensor:
        """``model``'s output on ``inputs``, computed from step ``start`` (> 0) on where the batch is
        recorded."""
        recorded = self._find(inputs)
        if recorded is None and record and self.used_bytes < self.budget_bytes:
            recorded = self._record(inputs)
        if recorded is None:
            return model(inputs)
        names = self._crossing[start]
        known = dict(zip(names, _FromRecord.apply(inputs, recorded, names), strict=True))
        known[model.input_name] = inputs
        return model.evaluate_from(known, start, model.output_name)[model.output_name]

    def _find(self, inputs: Tensor) -> _Recorded | None:
        candidates = self._entries.get(_key(inputs), [])
        return next((entry for entry in candidates if torch.equal(entry.leaf, inputs)), None)

    def _record(self, inputs: Tensor) -> _Recorded:
        leaf, env, computed_bytes = recorded_forward(self.trained, inputs)
        self.used_bytes += computed_bytes  # the leaf among them
        recorded = _Recorded(leaf, {name: env[name] for name in self._kept})
        self._entries.setdefault(_key(inputs), []).append(recorded)
        return recorded


def first_step(model: OnnxGraphModule, randomized: list[Layer]) -> int:
    """Index of the first step that runs a randomized layer: every step before it is as trained."""
    paths = {layer.path for layer in randomized}
    return next((i for i, step in enumerate(model.steps) if step.module in paths), len(model.steps))


class StageForward(nn.Module):
    """One stage's model, starting from the trained model's recorded values; with a gradient memo."""

    def __init__(
        self, model: OnnxGraphModule, record: ForwardRecord, start: int, memo_bytes: int, recording: bool
    ) -> None:
        super().__init__()
        self.model = model
        self._record, self._start, self._recording = record, start, recording
        self._memo: dict[Key, list[tuple[Tensor, Tensor, Tensor]]] = {}
        self._memo_left = memo_bytes

    def forward(self, inputs: Tensor) -> Tensor:
        return self._record.forward(self.model, inputs, self._start, self._recording)

    def gradient(self, inputs: Tensor, target: Tensor, compute: Callable[[], Tensor]) -> Tensor:
        """``compute()`` (the gradient of logit ``target`` at ``inputs``), once per stage."""
        candidates = self._memo.setdefault(_key(inputs), [])
        for seen, seen_target, gradient in candidates:
            if torch.equal(seen, inputs) and torch.equal(seen_target, target):
                return gradient
        gradient = compute()
        cost = _nbytes([inputs, gradient])
        if cost <= self._memo_left:
            self._memo_left -= cost
            candidates.append((inputs.detach().clone(), target.clone(), gradient))
        return gradient
