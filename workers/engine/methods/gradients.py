"""Gradient-based methods: plain gradient, gradient x input, Integrated Gradients, SmoothGrad, VarGrad."""

import sys

import numpy as np
import torch
from torch import Tensor, nn

from workers.core.audit_settings import AuditSettings, IgBaseline
from workers.engine.forward_record import StageForward
from workers.engine.methods.base import PartFn, SaliencyMethod
from workers.engine.passes import count_passes


def logit_gradient(model: nn.Module, inputs: Tensor, target: Tensor) -> Tensor:
    """d logit_target / d input, signed, for each image of the batch; once per stage for the same images."""

    def compute() -> Tensor:
        count_passes(len(inputs), backward=True)
        leaf = inputs.detach().requires_grad_(True)
        selected = model(leaf).gather(1, target.view(-1, 1)).sum()
        (gradient,) = torch.autograd.grad(selected, leaf)
        return gradient.detach()

    return model.gradient(inputs, target, compute) if isinstance(model, StageForward) else compute()


def images_per_pass(settings: AuditSettings) -> int:
    """Images per forward/backward pass; unset (outside an audit, which sets it from its memory
    budget) means a single pass."""
    return settings.internal_batch_size or sys.maxsize


def noise_std(inputs: Tensor, level: float) -> Tensor:
    """Each image's noise std, ``level`` x (max - min) of that image, shaped to broadcast over it."""
    flat = inputs.reshape(len(inputs), -1)
    spread = flat.max(dim=1).values - flat.min(dim=1).values
    return (level * spread).view(len(inputs), *([1] * (inputs.dim() - 1)))


INPUT_GRADIENT = "input_gradient"  # Gradient x Input takes Gradient's gradient at the same stage (reuse)


class _PlainGradients(SaliencyMethod):
    """Methods that only differentiate the model's output: a stage may start them from recorded values."""

    reuses_forward = True


class Gradient(_PlainGradients):
    name = "gradient"
    family = INPUT_GRADIENT

    def attribute(
        self, model: nn.Module, inputs: Tensor, target: Tensor, generator: torch.Generator
    ) -> Tensor:
        return logit_gradient(model, inputs, target)


class GradientXInput(_PlainGradients):
    name = "gradient_x_input"
    family = INPUT_GRADIENT

    def attribute(
        self, model: nn.Module, inputs: Tensor, target: Tensor, generator: torch.Generator
    ) -> Tensor:
        return logit_gradient(model, inputs, target) * inputs


class IntegratedGradients(_PlainGradients):
    """Straight path from a black image, as in the paper. Black is pixel value 0 preprocessed like the
    probes: with mean/std normalization that is -mean/std per channel, not the zero of the model input
    (which would be the mean colour)."""

    name = "integrated_gradients"

    def parameters(self) -> dict[str, float | int | str | None]:
        return {
            "steps": self.context.settings.ig_steps,
            "baseline": self.context.settings.ig_baseline.value,
            "integration": "gausslegendre",
            "internal_batch_size": self.context.settings.internal_batch_size,
        }

    def attribute(
        self, model: nn.Module, inputs: Tensor, target: Tensor, generator: torch.Generator
    ) -> Tensor:
        """captum's formula (Gauss-Legendre nodes and weights on [0, 1]), with the steps batched here so
        each pass goes through ``logit_gradient`` and a stage can start it from recorded values."""
        settings = self.context.settings
        baseline = self.baseline(inputs)
        difference = inputs - baseline
        nodes, weights = np.polynomial.legendre.leggauss(settings.ig_steps)
        alphas, step_sizes = (0.5 * (1 + nodes)).tolist(), (0.5 * weights).tolist()
        steps_per_pass = max(1, images_per_pass(settings) // len(inputs))
        total = torch.zeros_like(inputs)
        for first in range(0, settings.ig_steps, steps_per_pass):
            chunk = alphas[first : first + steps_per_pass]
            scaled = torch.cat([baseline + alpha * difference for alpha in chunk])
            gradient = logit_gradient(model, scaled, target.repeat(len(chunk))).view(
                len(chunk), *inputs.shape
            )
            sizes = torch.tensor(step_sizes[first : first + len(chunk)], dtype=inputs.dtype).to(inputs.device)
            total += (gradient * sizes.view(-1, *([1] * inputs.dim()))).sum(dim=0)
        return total * difference

    def baseline(self, inputs: Tensor) -> Tensor:
        settings = self.context.settings
        if settings.ig_baseline is IgBaseline.zero:
            return torch.zeros_like(inputs)
        if settings.ig_baseline is IgBaseline.mean:
            return inputs.mean(dim=tuple(range(2, inputs.dim())), keepdim=True).expand_as(inputs)
        preprocessing = settings.preprocessing
        channels = (1, -1) + (1,) * (inputs.dim() - 2)
        mean = torch.tensor(preprocessing.mean or [0.0], dtype=inputs.dtype, device=inputs.device)
        std = torch.tensor(preprocessing.std or [1.0], dtype=inputs.dtype, device=inputs.device)
        return ((0.0 - mean.view(channels)) / std.view(channels)).expand_as(inputs)


class _NoisyGradients(_PlainGradients):
    """Gradients at noisy copies of each image; noise std = noise_level x (max - min) of that image.

    captum's NoiseTunnel takes an absolute std per input tensor, so a per-image std (the paper's setting)
    is drawn here. Noise comes from ``generator`` on the CPU, so maps are the same on any device.
    SmoothGrad and VarGrad are the first two moments of the same noisy gradients: one part, one noise.
    """

    stochastic = True
    family = "noisy_gradients"

    def parameters(self) -> dict[str, float | int | str | None]:
        settings = self.context.settings
        return {
            "samples": settings.noise_samples,
            "noise_level": settings.noise_level,
            "noise_std": "noise_level x (max - min) of each image",
        }

    def parts(self) -> dict[str, PartFn]:
        return {"noisy_gradient_moments": self._moments}

    def _moments(
        self, model: nn.Module, inputs: Tensor, target: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Mean and mean square of the gradient over noise samples."""
        settings = self.context.settings
        batch = inputs.shape[0]
        std = noise_std(inputs, settings.noise_level)
        samples_per_pass = max(1, images_per_pass(settings) // batch)
        total = torch.zeros_like(inputs)
        total_square = torch.zeros_like(inputs)
        remaining = settings.noise_samples
        while remaining > 0:
            count = min(samples_per_pass, remaining)
            noise = torch.randn((count, *inputs.shape), generator=generator).to(inputs.device)
            noisy = (inputs.unsqueeze(0) + noise * std.unsqueeze(0)).reshape(count * batch, *inputs.shape[1:])
            gradient = logit_gradient(model, noisy, target.repeat(count)).reshape(count, *inputs.shape)
            total += gradient.sum(dim=0)
            total_square += gradient.square().sum(dim=0)
            remaining -= count
        mean = total / settings.noise_samples
        return mean, total_square / settings.noise_samples


class SmoothGrad(_NoisyGradients):
    name = "smoothgrad"

    def combine(self, parts: dict[str, Tensor | tuple[Tensor, ...]], inputs: Tensor) -> Tensor:
        mean, _ = parts["noisy_gradient_moments"]
        return mean


class VarGrad(_NoisyGradients):
    name = "vargrad"

    def combine(self, parts: dict[str, Tensor | tuple[Tensor, ...]], inputs: Tensor) -> Tensor:
        mean, mean_square = parts["noisy_gradient_moments"]
        return (mean_square - mean.square()).clamp_min(0)
