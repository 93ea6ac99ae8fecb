"""Which layers a stage of the parameter tests randomizes together (docs/decisions/0025).

The paper randomized Inception v3 by blocks (17 of them, from the logits down to Conv2d_1a), not by
layer: a stage per layer multiplies the work by the layers per block and draws a curve nobody reads at
that resolution. A block here is:

1. a *segment* of the graph between two cut points, values that every path from the input to the
   output crosses: a residual block, an Inception block or a dense block is one segment, and a plain
   CNN has a cut after every layer, so each of its layers is a segment of its own;
2. consecutive segments merged where the file names them one block: every layer of them under the same
   numbered module scope (``layer3.1``, ``features.4``, ``stages.1.blocks.2``, the innermost that holds
   more than one layer and not every layer) or Keras name prefix (``block_3_expand``), as a stride-2
   inverted residual without a skip connection is three segments but one block;
3. adjacent blocks merged evenly until at most ``max_stages`` remain.

Models that are no converted graph (TorchScript, torch.export) have no cut points to read: their layers
are merged by names alone. The rule reads only the graph and the layers' names, so two exports of one
model give the same stages.
"""

import re
from dataclasses import dataclass
from itertools import pairwise

from torch import nn

from workers.core.audit_settings import AuditSettings, StageUnit
from workers.engine.layers import Layer
from workers.engine.onnx_import import OnnxGraphModule

_KERAS_BLOCK = re.compile(r"^(.+?_\d+)_")  # block_3_expand -> block_3


@dataclass(frozen=True)
class Block:
    """Layers one stage randomizes together, in forward order."""

    name: str
    layers: tuple[Layer, ...]


def stage_blocks(model: nn.Module, layers: list[Layer], settings: AuditSettings) -> list[Block]:
    if settings.stages is StageUnit.layers:
        return layer_blocks(layers)
    segments = graph_segments(model, layers) if isinstance(model, OnnxGraphModule) else [[y] for y in layers]
    named = dict(zip([y.path for y in layers], named_blocks([y.name for y in layers]), strict=True))
    groups = _merge_named(segments, named)
    return [_block(run, named) for run in _merge_evenly(groups, settings.max_stages)]


def layer_blocks(layers: list[Layer]) -> list[Block]:
    """One layer per stage."""
    return [Block(layer.name, (layer,)) for layer in layers]


def graph_segments(graph: OnnxGraphModule, layers: list[Layer]) -> list[list[Layer]]:
    """The layers, grouped by the segments between the graph's cut points: boundaries between steps
    where one value depending on the input's contents is all that the rest of the graph reads."""
    data = graph.data_values()
    last_use: dict[str, int] = {}
    for index, step in enumerate(graph.steps):
        if step.op_type in ("Shape", "Size"):
            continue  # reads only the shape: the value it reads need not stay live
        for name in step.inputs:
            if name:
                last_use[name] = index
    last_use[graph.output_name] = len(graph.steps)
    live = {graph.input_name} & set(last_use)
    segment_of_step, segment = [], 0
    for index, step in enumerate(graph.steps):
        live = {name for name in live if last_use.get(name, -1) >= index}
        if len(live) == 1 and index > 0:
            segment += 1
        segment_of_step.append(segment)
        live |= {name for name in step.outputs if name in data and name in last_use}
    first_step = {}
    for index, step in enumerate(graph.steps):
        if step.module:
            first_step.setdefault(step.module, index)
    groups: list[list[Layer]] = []
    previous = None
    for layer in layers:
        current = segment_of_step[first_step[layer.path]] if layer.path in first_step else None
        if groups and current is not None and current == previous:
            groups[-1].append(layer)
        else:
            groups.append([layer])
        previous = current
    return groups


def named_blocks(names: list[str]) -> list[str | None]:
    """The block each layer's name places it in, or None. A block is a numbered module scope of the
    layer (a component that is a number or ends in _<number>: ``layer3.1``, ``features.4``,
    ``encoder_layer_2``), the innermost one that holds more than this layer, or a flat Keras name's
    prefix up to its first _<number>_ (``block_3_expand`` -> ``block_3``), among the same. A scope that
    holds every layer is no block (a model wrapped as ``Sequential(normalize, net)``: every name starts
    with ``1.``), nor is the layer itself (VGG's ``features.0``)."""
    candidates = [_candidates(name) for name in names]
    holds: dict[str, int] = {}
    for scopes in candidates:
        for scope in scopes:
            holds[scope] = holds.get(scope, 0) + 1
    return [next((scope for scope in scopes if 1 < holds[scope] < len(names)), None) for scopes in candidates]


def _candidates(name: str) -> list[str]:
    """The numbered scopes of a layer's name, innermost first, without the layer itself."""
    parts = name.split(".")
    if len(parts) == 1:
        match = _KERAS_BLOCK.match(name)
        return [match.group(1)] if match else []
    return [
        ".".join(parts[:depth])
        for depth in range(len(parts) - 1, 0, -1)
        if parts[depth - 1].isdigit() or re.search(r"_\d+$", parts[depth - 1])
    ]


def _merge_named(segments: list[list[Layer]], blocks: dict[str, str | None]) -> list[list[Layer]]:
    """Consecutive segments whose layers all lie in the same named block become one group."""
    merged: list[list[Layer]] = []
    previous: str | None = None
    for segment in segments:
        names = {blocks[layer.path] for layer in segment}
        common = names.pop() if len(names) == 1 else None
        if merged and common is not None and common == previous:
            merged[-1].extend(segment)
        else:
            merged.append(list(segment))
        previous = common
    return merged


def _merge_evenly(groups: list[list[Layer]], most: int) -> list[list[list[Layer]]]:
    """At most ``most`` runs of adjacent groups, of as equal a number of groups as the count allows."""
    count = len(groups)
    runs = min(most, count)
    bounds = [round(k * count / runs) for k in range(runs + 1)] if runs else [0]
    return [groups[start:end] for start, end in pairwise(bounds)]


def _block(run: list[list[Layer]], blocks: dict[str, str | None]) -> Block:
    layers = tuple(layer for group in run for layer in group)
    names = [_group_name(group, blocks) for group in run]
    name = names[0] if len(names) == 1 else f"{names[0]} to {names[-1]}"
    return Block(name, layers)


def _group_name(group: list[Layer], blocks: dict[str, str | None]) -> str:
    """The group's named block, or its single layer's name, or its first and last layer's."""
    named = {blocks[layer.path] for layer in group}
    if len(named) == 1 and None not in named:
        return str(named.pop())
    return group[0].name if len(group) == 1 else f"{group[0].name} to {group[-1].name}"
