"""One interface for every saliency method, in the manner of captum: a class per method.

A contributor adds a method by writing one subclass with a ``name``; ``__init_subclass__`` registers it.

A method either computes its maps alone (``attribute``) or says which intermediate results, *parts*, its
maps are made of and how (``parts`` and ``combine``): SmoothGrad and VarGrad are two moments of the same
noisy gradients; Guided GradCAM is the product of the Guided Backprop and GradCAM maps. The audit computes
each part once per model, inputs, classes and noise seed for every method that needs it
(``workers.engine.shared_parts``), so the maps are those each method gives alone, bit for bit.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from workers.core.audit_settings import AuditSettings
from workers.core.errors import AuditInputError
from workers.engine.methods.gradcam_target import GradCamTarget

_REGISTRY: dict[str, type["SaliencyMethod"]] = {}


@dataclass(frozen=True)
class MethodContext:
    """What a method may need to know about the audited model beyond the settings."""

    settings: AuditSettings
    gradcam: GradCamTarget | None = None  # the value GradCAM reads; None when the model has none


# a part's computation: (model, inputs, target classes, noise generator) -> one tensor or several
PartFn = Callable[[nn.Module, Tensor, Tensor, torch.Generator], Tensor | tuple[Tensor, ...]]


class SaliencyMethod:
    """Maps a batch of inputs [N, C, H, W] and target classes [N] to saliency maps of the same shape as x."""

    name: ClassVar[str]
    stochastic: ClassVar[bool] = False
    uses_model: ClassVar[bool] = True
    reads_gradcam_layer: ClassVar[bool] = False  # needs ``MethodContext.gradcam``
    reuses_forward: ClassVar[bool] = False  # may run on a ``forward_record.StageForward`` (no hooks, no taps)

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            if cls.attribute is SaliencyMethod.attribute and cls.parts is SaliencyMethod.parts:
                raise TypeError(f"method {cls.name!r} defines neither attribute nor parts")
            _REGISTRY[cls.name] = cls

    def __init__(self, context: MethodContext) -> None:
        self.context = context

    def check_supported(self, model: nn.Module, example: Tensor) -> None:
        """Raise MethodUnsupportedError when this method cannot give a correct map on ``model``."""
        return

    def parameters(self) -> dict[str, float | int | str | None]:
        """The settings that shape this method's maps, recorded in the report."""
        return {}

    # methods made of the same parts name their family: one noise seed, so that a part they share is one
    # computation (SmoothGrad and VarGrad draw the same noise; Guided Backprop, GradCAM and Guided
    # GradCAM draw none), and one unit of the audit's plan, where the sharing happens (plan.py)
    family: ClassVar[str | None] = None

    @property
    def noise_key(self) -> str:
        """What the noise seed derives from: the method's family, or its name."""
        return self.family or self.name

    def parts(self) -> dict[str, PartFn]:
        """The intermediate results the maps are made of, by a key naming the computation; empty for a
        method that computes its maps alone in ``attribute``."""
        return {}

    def combine(self, parts: dict[str, Tensor | tuple[Tensor, ...]], inputs: Tensor) -> Tensor:
        """The maps from ``parts`` (each computed on ``inputs``)."""
        raise NotImplementedError(f"{self.name} names no parts to combine")

    def attribute(
        self, model: nn.Module, inputs: Tensor, target: Tensor, generator: torch.Generator
    ) -> Tensor:
        """Saliency maps for ``inputs`` explaining logit ``target``; ``generator`` seeds any noise."""
        parts = {key: compute(model, inputs, target, generator) for key, compute in self.parts().items()}
        return self.combine(parts, inputs)


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


def method_class(name: str) -> type[SaliencyMethod]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise AuditInputError(
            f"unknown saliency method {name!r}; available: {', '.join(available_methods())}"
        ) from None


def create_method(name: str, context: MethodContext) -> SaliencyMethod:
    return method_class(name)(context)
