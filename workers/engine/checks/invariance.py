"""Input invariance (Kindermans et al., "The (Un)reliability of Saliency Methods", 2017/2019).

Shift every probe by a constant, x2 = x1 + m (m per channel), and build the same model with the first
layer's bias absorbing the shift, b2 = b1 - W m: f2(x2) = f1(x1) for every input, so the two models are
the same function of the image content. A method whose map depends on the model's function and the image
content only gives A(f2, x2) = A(f1, x1); one that is not input invariant (Gradient x Input, Integrated
Gradients from a baseline that does not move with the shift) gives another map.

A convolution that zero-pads its input breaks the identity at the borders: the zeros padded around x2
are -m in x1's terms. The shifted model pads with the shifted zero instead (m per channel, an explicit
pad before the convolution), which keeps f2(x2) = f1(x1) everywhere; the stage's note says so. Before
any map is made the shifted model's logits on the shifted probes are checked against the trained
model's on the probes; a model where they differ (a first layer that does not read the input directly:
a separate constant Pad step before it, normalization inside the graph) refuses the test with the
difference.

The statistic is each image's relative L2 difference of the raw maps, ||A(f2, x2) - A(f1, x1)|| /
||A(f1, x1)||. Raw maps, not the normalized ones: the claim is equality, and a method may fail it by
scale alone. Pass below ``invariance_tolerance`` (docs/decisions/0023).
"""

import copy
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.engine.checks.base import (
    CheckContext,
    RetrainFloor,
    SanityCheck,
    StageValues,
    judged_table,
)
from workers.engine.errors import AuditInputError
from workers.engine.layers import Layer
from workers.engine.randomization import StageModel
from workers.engine.report import RELATIVE_L2, Stage, Verdict
from workers.engine.settings import AuditSettings, RandomizationTest
from workers.engine.verdict import decide

SHIFTED_MAPS = "shifted"


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


def shifted_model(
    model: nn.Module, first: Layer, m: Tensor, image_shape: tuple[int, ...]
) -> tuple[nn.Module, str]:
    """A copy of ``model`` that computes on x + m what ``model`` computes on x, and a note on how."""
    shifted = copy.deepcopy(model)
    try:
        module = shifted.get_submodule(first.path)
    except AttributeError:
        module = None
    with torch.no_grad():
        if isinstance(module, nn.Conv2d):
            groups, out_channels = module.groups, module.out_channels
            weight = module.weight.sum(dim=(2, 3)).view(groups, out_channels // groups, -1)
            delta = torch.einsum("goi,gi->go", weight, m.to(weight).view(groups, -1)).reshape(-1)
            note = f"bias of {first.name} less W m (W summed over its kernel)"
            pads = _explicit_pads(module)
            if pads is not None:
                module.padding = (0, 0)
                module.register_forward_pre_hook(_pad_with(pads, m))
                note += (
                    f"; {first.name} zero-pads its input, so the shifted model pads with the shifted zero (m "
                    "per channel) before it, which keeps the borders invariant"
                )
        elif isinstance(module, nn.Linear) and module.in_features == int(np.prod(image_shape)):
            delta = module.weight @ m.to(module.weight).repeat_interleave(int(np.prod(image_shape[1:])))
            note = f"bias of {first.name} less W m (m repeated over the pixels of each channel)"
        else:
            raise AuditInputError(
                f"input invariance needs the first layer to be a torch Conv2d or Linear reading the image; "
                f"{first.name} is a {first.kind} (TorchScript and torch.export programs cannot be changed)"
            )
        if module.bias is None:
            module.bias = nn.Parameter(-delta, requires_grad=False)
        else:
            module.bias.sub_(delta)
    return shifted, note


def _pad_with(pads: list[int], m: Tensor):
    def hook(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        (x, *rest) = args
        shift = m.to(x).view(1, -1, *([1] * (x.dim() - 2)))
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
        self.model, self.note = shifted_model(context.model, first, self.shift, tuple(x.shape[1:]))
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
                f"{settings.conversion_atol} + {settings.conversion_rtol} x |logit|); the first layer may "
                "not read the image directly: a separate constant Pad step before it (asymmetric padding "
                "exported as Pad + a convolution with padding 0 pads x + m with zeros, not with m), or "
                "normalization or a layout change inside the graph"
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
