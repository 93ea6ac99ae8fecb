"""Gradient-based methods: plain gradient, gradient x input, Integrated Gradients, SmoothGrad, VarGrad."""

import torch
from captum.attr import IntegratedGradients as CaptumIntegratedGradients
from torch import Tensor, nn

from workers.engine.methods.base import SaliencyMethod
from workers.engine.settings import IgBaseline


def logit_gradient(model: nn.Module, inputs: Tensor, target: Tensor) -> Tensor:
    """d logit_target / d input, signed, for each image of the batch."""
    inputs = inputs.detach().requires_grad_(True)
    logits = model(inputs)
    selected = logits.gather(1, target.view(-1, 1)).sum()
    (gradient,) = torch.autograd.grad(selected, inputs)
    return gradient.detach()


class Gradient(SaliencyMethod):
    name = "gradient"

    def attribute(
        self, model: nn.Module, inputs: Tensor, target: Tensor, generator: torch.Generator
    ) -> Tensor:
        return logit_gradient(model, inputs, target)


class GradientXInput(SaliencyMethod):
    name = "gradient_x_input"

    def attribute(
        self, model: nn.Module, inputs: Tensor, target: Tensor, generator: torch.Generator
    ) -> Tensor:
        return logit_gradient(model, inputs, target) * inputs


class IntegratedGradients(SaliencyMethod):
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
        settings = self.context.settings
        attributions = CaptumIntegratedGradients(model).attribute(
            inputs,
            baselines=self.baseline(inputs),
            target=target,
            n_steps=settings.ig_steps,
            internal_batch_size=settings.internal_batch_size,
        )
        return attributions.detach()

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


class _NoisyGradients(SaliencyMethod):
    """Gradients at noisy copies of each image; noise std = noise_level x (max - min) of that image.

    captum's NoiseTunnel takes an absolute std per input tensor, so a per-image std (the paper's setting)
    is drawn here. Noise comes from ``generator`` on the CPU, so maps are the same on any device.
    """

    stochastic = True

    def parameters(self) -> dict[str, float | int | str | None]:
        settings = self.context.settings
        return {
            "samples": settings.noise_samples,
            "noise_level": settings.noise_level,
            "noise_std": "noise_level x (max - min) of each image",
        }

    def _moments(
        self, model: nn.Module, inputs: Tensor, target: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Mean and mean square of the gradient over noise samples."""
        settings = self.context.settings
        batch = inputs.shape[0]
        flat = inputs.reshape(batch, -1)
        std = settings.noise_level * (flat.max(dim=1).values - flat.min(dim=1).values)
        std = std.view(batch, *([1] * (inputs.dim() - 1)))
        samples_per_pass = max(1, settings.internal_batch_size // batch)
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

    def attribute(
        self, model: nn.Module, inputs: Tensor, target: Tensor, generator: torch.Generator
    ) -> Tensor:
        mean, _ = self._moments(model, inputs, target, generator)
        return mean


class VarGrad(_NoisyGradients):
    name = "vargrad"

    def attribute(
        self, model: nn.Module, inputs: Tensor, target: Tensor, generator: torch.Generator
    ) -> Tensor:
        mean, mean_square = self._moments(model, inputs, target, generator)
        return (mean_square - mean.square()).clamp_min(0)
