"""The converted graph at run time: a module that evaluates its steps in topological order."""

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

Shape = tuple[int | None, ...]
Fn = Callable[..., Tensor | tuple[Tensor, ...]]
Attrs = dict[str, Any]


@dataclass(frozen=True)
class Step:
    """One node at run time: either a submodule (by attribute name) or a pure function."""

    op_type: str
    inputs: tuple[str, ...]  # "" marks an omitted optional input
    outputs: tuple[str, ...]
    module: str | None = None
    fn: Fn | None = None
    scope: str = ""  # the module path of the source model the node came from, where the file says
    name: str = ""  # the node's name in the file
    attrs: Attrs = field(default_factory=dict, compare=False, hash=False)  # the node's ONNX attributes


class LearnedTensor(nn.Module):
    """A learned tensor outside any layer (a class token, a position embedding, a layer scale), made a
    parameter so that the randomization tests re-initialize it and twins train it."""

    def __init__(self, value: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(value.detach().float().clone())

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=0.02)  # how ViTs initialize class tokens and position embeddings

    def forward(self) -> Tensor:
        return self.weight


class OnnxGraphModule(nn.Module):
    """Runs the converted graph in topological order; ``forward`` returns the value ``output_name``.

    Any value of the graph can be *tapped*: an ``nn.Identity`` module is run on it, so hooks (GradCAM)
    can read values that no layer module produces, such as a residual sum or a token sequence.
    """

    def __init__(self, input_name: str, input_shape: Shape, graph_outputs: tuple[str, ...], opset: int):
        super().__init__()
        self.input_name = input_name
        self.input_shape = input_shape  # None for dynamic dimensions such as the batch
        self.source_input_name = input_name  # the graph's own input, which its runtime is fed
        self.input_layout = "NCHW"  # the graph's own input layout; ``forward`` always takes [N, C, H, W]
        self.graph_outputs = graph_outputs
        self.output_name = graph_outputs[0]
        self.selected_output = graph_outputs[0]  # the graph output audited (output_name: its logits)
        self.opset = opset  # default-domain opset the graph was read at, after any version conversion
        self.layer_names: dict[str, str] = {}  # module attribute -> name the artifact gave the layer
        self.steps: list[Step] = []
        self.constant_buffers: dict[str, str] = {}  # ONNX value name -> buffer attribute
        self.taps: dict[str, str] = {}  # ONNX value name -> attribute of the nn.Identity run on it
        self.static_ranks: dict[str, int] = {}  # value -> rank, where ONNX shape inference tells

    def take_channels_first_input(self) -> None:
        """Make a channels-last graph ([N, H, W, C] input, as Keras and Flax export) take [N, C, H, W] like
        every other: a first step moves the axes to the graph's own layout, so maps, figures and metrics
        see one layout whatever the framework."""
        batch, height, width, channels = self.input_shape
        self.input_layout = "NHWC"
        self.input_name = f"{self.source_input_name}::channels_first"
        self.input_shape = (batch, channels, height, width)
        perm = [0, 2, 3, 1]
        to_source = Step(
            "Transpose",
            (self.input_name,),
            (self.source_input_name,),
            fn=partial(torch.permute, dims=perm),
            attrs={"perm": perm},
        )
        self.steps.insert(0, to_source)

    def forward(self, x: Tensor) -> Tensor:
        return self.run(x, self.output_name)

    def run(self, x: Tensor, output_name: str) -> Tensor:
        """Evaluate the graph up to the value ``output_name`` (any value of the graph)."""
        env = self._evaluate(x, output_name)
        if output_name not in env:
            raise ValueError(f"the graph has no value named {output_name!r}")
        return env[output_name]

    @torch.no_grad()
    def value_shapes(self, x: Tensor) -> dict[str, tuple[int, ...]]:
        """The shape of every value on one input batch."""
        return {name: tuple(value.shape) for name, value in self._evaluate(x, None).items()}

    def _evaluate(self, x: Tensor, output_name: str | None) -> dict[str, Tensor]:
        return self.evaluate_from({self.input_name: x}, 0, output_name)

    def evaluate_from(
        self, known: dict[str, Tensor], start: int, output_name: str | None
    ) -> dict[str, Tensor]:
        """Run steps ``start`` onward on the values ``known`` (the input, and every value that an earlier
        step produced and a later one reads), until ``output_name`` is computed (None: every step)."""
        env: dict[str, Tensor] = {name: getattr(self, attr) for name, attr in self.constant_buffers.items()}
        env.update(known)
        for step in self.steps[start:]:
            if output_name in env:
                break
            args = [env[name] if name else None for name in step.inputs]
            out = self._modules[step.module](*args) if step.module else step.fn(*args)
            for name, value in zip(step.outputs, (out,) if isinstance(out, Tensor) else out, strict=False):
                env[name] = self._modules[self.taps[name]](value) if name in self.taps else value
        return env

    def crossing_values(self, start: int) -> tuple[str, ...]:
        """Values computed before step ``start`` that step ``start`` or a later one reads, or that are the
        output: with these (and the input) the graph can go on from ``start``."""
        produced = {name for step in self.steps[:start] for name in step.outputs}
        read = {name for step in self.steps[start:] for name in step.inputs if name}
        read.add(self.output_name)
        return tuple(sorted(produced & read))

    def tap(self, value: str) -> str:
        """The attribute of a module whose output is ``value`` (added on first use)."""
        if value not in self.taps:
            attr = f"tap_{len(self.taps)}"
            self.add_module(attr, nn.Identity())
            self.taps[value] = attr
        return self.taps[value]

    def producers(self) -> dict[str, Step]:
        """The step that computes each value."""
        return {name: step for step in self.steps for name in step.outputs}

    def producer(self, value: str) -> Step | None:
        return self.producers().get(value)

    def pre_softmax_output(self) -> str | None:
        """The logits, when ``output_name`` is a final Softmax/LogSoftmax, as such or passed on unchanged
        in value (Identity, Cast, Reshape, Flatten: paddle2onnx ends its graphs with Softmax -> Identity);
        else None."""
        producers = self.producers()
        step = producers.get(self.output_name)
        reshaped = False
        while step is not None and step.op_type in ("Identity", "Cast", "Reshape", "Flatten", "Squeeze"):
            reshaped = reshaped or step.op_type not in ("Identity", "Cast")
            step = producers.get(step.inputs[0])
        if step is None or step.op_type not in ("Softmax", "LogSoftmax"):
            return None
        logits = step.inputs[0]
        if reshaped and (self.static_ranks.get(logits) != 2 or step.attrs.get("axis", -1) not in (1, -1)):
            return None  # a softmax over something other than [N, classes] (grouped, spatial): kept
        return logits

    def select_output(self, choice: str | None) -> None:
        """Audit the graph output named ``choice`` (or at that 0-based position; default the first) and
        drop every step and layer that does not feed it, so unused heads are neither layers nor run."""
        outputs = self.graph_outputs
        if choice is not None:
            position = int(choice) if choice.isdigit() else None
            if choice not in outputs and (position is None or position >= len(outputs)):
                shown = ", ".join(f"{i}: {name!r}" for i, name in enumerate(outputs))
                raise ValueError(f"the model has no output {choice!r}; its outputs are {shown}")
            self.output_name = choice if choice in outputs else outputs[position]
            self.selected_output = self.output_name
        kept = self.steps_to_output()
        used = {step.module for step in kept if step.module}
        for step in self.steps:
            if step.module and step.module not in used and step.module in self._modules:
                del self._modules[step.module]
                self.layer_names.pop(step.module, None)
        self.steps = kept

    def steps_to_output(self) -> list[Step]:
        """The steps the output depends on, in execution order."""
        needed, kept = {self.output_name}, []
        for step in reversed(self.steps):
            if needed.intersection(step.outputs):
                kept.append(step)
                needed.update(name for name in step.inputs if name)
        return kept[::-1]

    def data_values(self) -> set[str]:
        """Values that depend on the input's contents (not only on its shape)."""
        data = {self.input_name}
        for step in self.steps:
            if step.op_type not in ("Shape", "Size") and data.intersection(step.inputs):
                data.update(step.outputs)
        return data
