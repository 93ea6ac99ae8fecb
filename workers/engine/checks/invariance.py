"""Input invariance (Kindermans et al., "The (Un)reliability of Saliency Methods", 2017/2019).

Shift every probe by a constant, x2 = x1 + m (m per channel), and build the same model with the first
layer's bias absorbing the shift, b2 = b1 - W m: f2(x2) = f1(x1) for every input, so the two models are
the same function of the image content. A method whose map depends on the model's function and the image
content only gives A(f2, x2) = A(f1, x1); one that is not input invariant (Gradient x Input, Integrated
Gradients from a baseline that does not move with the shift) gives another map.

The shift is measured where it arrives, not assumed: the first layer's input on the shifted probes less
its input on the probes, d, which must be the same for every image and, for a convolution, for every
position (normalization inside the graph scales m, and d absorbs that). A convolution that zero-pads its
input breaks the identity at the borders: the zeros padded around x2 are -d in x1's terms. The shifted
model pads with the shifted zero instead (d per channel, an explicit pad before the convolution); a
constant Pad step of an ONNX graph on the way to the first layer (asymmetric 'same' padding, as Keras
and TensorFlow export a strided first convolution) pads with its constant plus the shift it receives.
The stage's note says which. Before any map is made the shifted model's logits on the shifted probes are
checked against the trained model's on the probes; a model where d varies, or where the logits differ,
refuses the test with the reason.

The statistic is each image's relative L2 difference of the raw maps, ||A(f2, x2) - A(f1, x1)|| /
||A(f1, x1)||. Raw maps, not the normalized ones: the claim is equality, and a method may fail it by
scale alone. Pass below ``invariance_tolerance`` (docs/decisions/0023).
"""

import copy
import dataclasses
from collections.abc import Callable, Iterator
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.core.audit_settings import AuditSettings, RandomizationTest
from workers.core.errors import AuditInputError
from workers.core.report import RELATIVE_L2, Stage, Verdict
from workers.engine.checks.base import (
    CheckContext,
    RetrainFloor,
    SanityCheck,
    StageValues,
    judged_table,
)
from workers.engine.layers import Layer
from workers.engine.onnx_import.builder import INPUT_SCALING
from workers.engine.onnx_import.graph import OnnxGraphModule
from workers.engine.parameter_stages import StageModel
from workers.engine.verdict import decide

SHIFTED_MAPS = "shifted"
_MEASURED = 8  # probes the shift reaching the first layer is measured on


def channel_shift(x: Tensor, shift: float) -> Tensor:
    """m per channel: ``shift`` times the channel's value range over the probe set (1 where it is 0)."""
    dims = [d for d in range(x.dim()) if d != 1]
    spread = x.amax(dim=dims) - x.amin(dim=dims)
    return shift * torch.where(spread > 0, spread, torch.ones_like(spread))


def _explicit_pads(conv: nn.Conv2d) -> list[int] | None:
    """F.pad's (left, right, top, bottom) for a zero-padding convolution; None when it pads nothing."""
    if conv.padding_mode != "zeros":
        return None  # reflect, replicate and circular padding commute with the shift
    if conv.padding == "valid":
        return None
    if conv.padding == "same":
        pads: list[int] = []
        for dilation, kernel in reversed(list(zip(conv.dilation, conv.kernel_size, strict=True))):
            total = dilation * (kernel - 1)
            pads += [total // 2, total - total // 2]
    else:
        pads = [p for padding in reversed(conv.padding) for p in (padding, padding)]  # type: ignore[union-attr]
    return pads if any(pads) else None


def shifted_model(model: nn.Module, first: Layer, x: Tensor, m: Tensor) -> tuple[nn.Module, str]:
    """A copy of ``model`` that computes on x + m what ``model`` computes on x, and a note on how.

    The shift that reaches the first layer is measured, not assumed: normalization inside the graph
    scales it, and constant Pad steps of an ONNX graph between the input and the first layer (asymmetric
    'same' padding exported as Pad + a convolution) pad with the shifted constant first, as the
    convolution's own zero padding does below."""
    shifted = copy.deepcopy(model)
    moved = x + m.view(1, -1, *([1] * (x.dim() - 2)))
    notes = [_shift_pad(shifted, model, pad, x, moved, first) for pad in _pad_steps_before(shifted, first)]
    module = _module_at(shifted, first)
    if not isinstance(module, nn.Conv2d | nn.Linear):
        raise AuditInputError(
            f"input invariance needs the first layer to be a torch Conv2d or Linear reading the image; "
            f"{first.name} is a {first.kind} (TorchScript and torch.export programs cannot be changed)"
        )
    d = _shift_at_input(shifted, model, first, x, moved)
    with torch.no_grad():
        if isinstance(module, nn.Conv2d):
            channels = _constant_except(d, axis=0, name=first.name)  # d: one image, [C, H, W]
            groups, out_channels = module.groups, module.out_channels
            weight = module.weight.sum(dim=(2, 3)).view(groups, out_channels // groups, -1)
            delta = torch.einsum("goi,gi->go", weight, channels.to(weight).view(groups, -1)).reshape(-1)
            notes.append(
                f"bias of {first.name} less W d, d the shift its input receives (W summed over its kernel)"
            )
            pads = _explicit_pads(module)
            if pads is not None:
                module.padding = (0, 0)
                module.register_forward_pre_hook(_pad_with(pads, channels))
                notes.append(
                    f"{first.name} zero-pads its input, so the shifted model pads with the shifted zero (d "
                    "per channel) before it, which keeps the borders invariant"
                )
        else:
            features = _constant_except(d, axis=d.dim() - 1, name=first.name)
            delta = module.weight @ features.to(module.weight)
            notes.append(f"bias of {first.name} less W d, d the shift its input receives")
        if module.bias is None:
            module.bias = nn.Parameter(-delta, requires_grad=False)
        else:
            module.bias.sub_(delta)
    return shifted, "; ".join(notes)


def _module_at(model: nn.Module, layer: Layer) -> nn.Module | None:
    try:
        return model.get_submodule(layer.path)
    except AttributeError:
        return None


def _captured_input(model: nn.Module, module: nn.Module, x: Tensor) -> Tensor:
    """What ``module`` receives on its first call while ``model`` runs on ``x``."""
    seen: list[Tensor] = []
    handle = module.register_forward_pre_hook(lambda _, args: seen.append(args[0]) if not seen else None)
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


def _shift_at_input(shifted: nn.Module, model: nn.Module, first: Layer, x: Tensor, moved: Tensor) -> Tensor:
    """[...]: how much more the first layer's input is in the shifted model on x + m than in the model on
    x, for the first image (the same for every image, else the shift depends on the image: refused)."""
    before = _captured_input(model, _module_at(model, first), x)  # type: ignore[arg-type]
    after = _captured_input(shifted, _module_at(shifted, first), moved)  # type: ignore[arg-type]
    d = after.double() - before.double()
    if not torch.allclose(d, d[:1].expand_as(d), atol=_tolerance(d)):
        raise AuditInputError(
            f"input invariance: the shift reaching {first.name} differs between images; the graph before it "
            "is not an affine map of the image per channel"
        )
    return d[0]


def _tolerance(d: Tensor) -> float:
    return 1e-5 * max(1.0, float(d.abs().max()))


def _vector_along(d: Tensor, axis: int) -> Tensor | None:
    """d (one image's shift) as a vector along ``axis``; None where it varies along another axis."""
    vector = d.movedim(axis, 0).reshape(d.shape[axis], -1)
    if not torch.allclose(vector, vector[:, :1].expand_as(vector), atol=_tolerance(d)):
        return None
    return vector[:, 0].float()


def _constant_except(d: Tensor, axis: int, name: str) -> Tensor:
    """d as a vector along ``axis``: it must not vary along the other axes. A Pad step or a mask before
    the layer makes the shift differ at the borders or between positions."""
    vector = _vector_along(d, axis)
    if vector is None:
        raise AuditInputError(
            f"input invariance: the shift reaching {name} varies across positions, so no bias can absorb it; "
            "a constant pad before it (other than a Pad step of an ONNX graph) or a mask leaves part of its "
            "input unshifted"
        )
    return vector


def _pad_steps_before(model: nn.Module, first: Layer) -> list[int]:
    """Indices of the constant-mode Pad steps on the way from an ONNX graph's input to the first layer,
    through steps that only scale, move or pad the image; none for a model of another kind."""
    if not isinstance(model, OnnxGraphModule):
        return []
    producers, data = model.producers(), model.data_values()
    layer = next((step for step in model.steps if step.module == first.path), None)
    value, pads = layer.inputs[0] if layer else model.input_name, []
    while value != model.input_name:
        step = producers.get(value)
        if step is None or step.op_type not in INPUT_SCALING:
            return []
        if step.op_type == "Pad" and step.attrs.get("mode", "constant") == "constant":
            pads.append(model.steps.index(step))
        read = [name for name in step.inputs if name in data]  # Mul(scale, x): the image's side
        if len(read) != 1:
            return []
        value = read[0]
    return pads[::-1]


def _shift_pad(
    shifted: OnnxGraphModule, model: OnnxGraphModule, index: int, x: Tensor, moved: Tensor, first: Layer
) -> str:
    """Make Pad step ``index`` of the shifted graph pad with its constant plus the shift its input
    receives (measured with the earlier Pad steps already shifted), so that its whole output is shifted
    alike; the note that says so."""
    step = shifted.steps[index]
    label = f"the Pad step {step.name}" if step.name else f"the padding before {first.name} (a Pad step)"
    with torch.no_grad():
        d = shifted.run(moved, step.inputs[0]).double() - model.run(x, step.inputs[0]).double()
    offset = _along_one_axis(d[0])
    if offset is None or not torch.allclose(d, d[:1].expand_as(d), atol=_tolerance(d)):
        raise AuditInputError(
            f"input invariance: the shift reaching {label} is not one value per channel, so its padding "
            "cannot follow it"
        )
    assert step.fn is not None
    shifted.steps[index] = dataclasses.replace(
        step, fn=partial(_padded_with_shift, pad=step.fn, offset=offset)
    )
    try:
        with torch.no_grad():
            shifted.run(moved[:1], step.outputs[0])
    except RuntimeError:  # the step pads the axis the shift varies along: no offset follows it
        raise AuditInputError(
            f"input invariance: {label} pads along the axis its shift varies along, so its padding "
            "cannot follow the shift"
        ) from None
    return f"{label} pads with its constant plus the shift it receives (per channel)"


def _padded_with_shift(x: Tensor, *rest: Tensor | None, pad: Callable[..., Tensor], offset: Tensor) -> Tensor:
    return pad(x - offset.to(x), *rest) + offset.to(x)


def _along_one_axis(d: Tensor) -> Tensor | None:
    """One image's shift as a tensor that varies along one axis at most, shaped to broadcast over a
    batch; None where it varies along more (the channel axis of an NCHW or NHWC graph is not known)."""
    if torch.allclose(d, d.flatten()[0].expand_as(d), atol=_tolerance(d)):
        return d.flatten()[0].float().view([1] * (d.dim() + 1))  # one value: broadcasts over any padding
    for axis in range(d.dim()):
        vector = _vector_along(d, axis)
        if vector is not None:
            shape = [1] * (d.dim() + 1)
            shape[axis + 1] = d.shape[axis]
            return vector.view(shape)
    return None


def _pad_with(pads: list[int], d: Tensor):
    def hook(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        (x, *rest) = args
        shift = d.to(x).view(1, -1, *([1] * (x.dim() - 2)))
        return (F.pad(x - shift, pads) + shift, *rest)

    return hook


def shifted_settings(settings: AuditSettings, m: Tensor) -> AuditSettings:
    """The settings as a user whose preprocessing gave x + m would state them: the mean subtracted is
    mean - m std, so 'black' (pixel value 0 preprocessed) moves with the shift; 'zero' stays put."""
    preprocessing = settings.preprocessing
    channels = len(m)
    mean = torch.tensor(preprocessing.mean or [0.0], dtype=torch.float64).expand(channels)
    std = torch.tensor(preprocessing.std or [1.0], dtype=torch.float64).expand(channels)
    moved = (mean - m.double().cpu() * std).tolist()
    return settings.model_copy(update={"preprocessing": preprocessing.model_copy(update={"mean": moved})})


def relative_l2(reference: Tensor, other: Tensor) -> np.ndarray:
    """[images]: ||other - reference|| / ||reference|| per image, in float64. Where the reference map is
    zero and the other is not, the whole other map is a change: 1, ||other - 0|| / ||other|| (a finite
    failure: the statistics skip inf as they skip NaN, and would hide it). NaN (undefined, counted)
    where both maps are zero or either is not finite."""
    a, b = reference.double().flatten(1), other.double().flatten(1)
    norm, other_norm = a.norm(dim=1), b.norm(dim=1)
    values = (b - a).norm(dim=1) / norm
    values = torch.where((norm == 0) & (other_norm > 0), 1.0, values)
    defined = torch.isfinite(a).all(dim=1) & torch.isfinite(b).all(dim=1) & torch.isfinite(values)
    defined &= (norm > 0) | (other_norm > 0)
    return torch.where(defined, values, torch.nan).cpu().numpy()


class InputInvariance(SanityCheck):
    """One stage, one draw: the shift is a constant, so only the images vary."""

    test = RandomizationTest.input_invariance
    needs_raw_maps = True  # the relative L2 of the raw maps

    def __init__(self, context: CheckContext) -> None:
        super().__init__(context)
        x, settings = context.inputs, context.settings
        if x is None or not context.layers:
            raise AuditInputError("input invariance needs the probes and a layer with parameters")
        self.shift = channel_shift(x, settings.invariance_shift)
        first = context.layers[0]
        self.first = first
        self.model, self.note = shifted_model(context.model, first, x[:_MEASURED], self.shift)
        self.model.eval()
        self.inputs = x + self.shift.view(1, -1, *([1] * (x.dim() - 2)))
        self.settings = shifted_settings(settings, self.shift)
        self.logit_difference = self._check_logits(x)

    def _check_logits(self, x: Tensor) -> float:
        settings = self.context.settings
        batch = settings.batch_size or 64
        with torch.no_grad():
            original = torch.cat([self.context.model(b) for b in x.split(batch)])
            shifted = torch.cat([self.model(b) for b in self.inputs.split(batch)])
        difference = (shifted - original).abs()
        allowed = settings.conversion_atol + settings.conversion_rtol * original.abs()
        worst = float(difference.max())
        if not bool(torch.isfinite(difference).all()) or bool((difference > allowed).any()):
            raise AuditInputError(
                f"input invariance: the model with the bias of {self.first.name} shifted does not compute "
                f"the same logits on the shifted probes (max |logit diff| {worst:.3g}, allowed "
                f"{settings.conversion_atol} + {settings.conversion_rtol} x |logit|); part of the image "
                "may reach the logits without passing through the first layer (a branch from the input "
                "around it), or the first layer may run more than once"
            )
        return worst

    def draws(self) -> int:
        return 1

    def max_draws(self) -> int:
        return 1

    def stage_count(self) -> int:
        return 1

    def stage_models(self, draw: int) -> Iterator[StageModel]:
        shift = ", ".join(f"{v:.3g}" for v in self.shift.tolist())
        note = (
            f"probes shifted by m = [{shift}] ({self.context.settings.invariance_shift} x each channel's "
            f"range); {self.note}; max |logit diff| to the trained model {self.logit_difference:.2e}"
        )
        yield StageModel(
            1,
            "shifted inputs",
            [],  # nothing randomized: the shifted first layer computes the same function
            self.model,
            SHIFTED_MAPS,
            inputs=self.inputs,
            settings=self.settings,
            note=note,
        )

    def measure(self, trained: Tensor, stage: Tensor) -> dict[str, np.ndarray]:
        return {RELATIVE_L2: relative_l2(trained, stage)}

    def judge(self, trained: Stage, stages: list[StageValues], retrain_floor: RetrainFloor | None) -> Verdict:
        (shifted,) = stages
        table = np.stack(shifted.measures[RELATIVE_L2])
        tolerance = self.context.settings.invariance_tolerance
        judged = judged_table(
            "relative L2 difference ||A(f2, x + m) - A(f1, x)|| / ||A(f1, x)|| of the raw maps",
            table,
            tolerance,
            trained,
            stages,
            unit="shifts",
        )
        verdict = decide(judged, self.rule)
        return verdict.model_copy(update={"metric": None})
