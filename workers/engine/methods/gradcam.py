"""GradCAM, and Guided GradCAM (Guided Backprop x GradCAM); which value GradCAM reads is
``gradcam_target``'s choice."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.core.errors import MethodUnsupportedError
from workers.engine.methods.base import PartFn, SaliencyMethod
from workers.engine.methods.gradcam_target import GradCamTarget, as_feature_map
from workers.engine.methods.guided_backprop import (
    GUIDED,
    GUIDED_GRADCAM_PARTS,
    GuidedBackprop,
    refuse_non_relu,
)
from workers.engine.onnx_import import OnnxGraphModule
from workers.engine.passes import count_passes

CAM = "gradcam"  # the part Guided GradCAM shares with GradCAM


def refuse_unreadable_target(method: str, target: GradCamTarget | None, model: nn.Module) -> None:
    """GradCAM needs a value of the model known to be a feature map [N, C, H, W] (or a patch grid)."""
    if target is None:
        raise MethodUnsupportedError(
            f"{method}: the model has no feature map [N, C, H, W] and no token sequence that tiles the "
            "input, so GradCAM has nothing to read; name one with gradcam_layer or leave GradCAM methods out"
        )
    if not isinstance(model, OnnxGraphModule) or model.producer(target.value) is None:
        raise MethodUnsupportedError(f"{method}: the model has no value {target.label!r} to read")
    if not target.is_feature_map:
        raise MethodUnsupportedError(
            f"{method}: {target.label} is not known to be a feature map [N, C, H, W] (layout "
            f"{target.layout!r}); GradCAM would average its gradients over the wrong axes"
        )


class GradCam(SaliencyMethod):
    """The chosen feature map (see ``gradcam_target``), ReLU, divided by its max, upsampled bilinearly."""

    name = "gradcam"
    family = GUIDED_GRADCAM_PARTS
    reads_gradcam_layer = True

    def parameters(self) -> dict[str, float | int | str | None]:
        target = self.context.gradcam
        return {
            "layer": target.label if target else None,
            "layer_reason": target.reason if target else None,
            "upsampling": self.context.settings.gradcam_upsampling.value,
            "scaling": "divide by max",
        }

    def check_supported(self, model: nn.Module, example: Tensor) -> None:
        refuse_unreadable_target(self.name, self.context.gradcam, model)

    def parts(self) -> dict[str, PartFn]:
        return {CAM: self.cam_maps}

    def combine(self, parts: dict[str, Tensor | tuple[Tensor, ...]], inputs: Tensor) -> Tensor:
        return parts[CAM]  # type: ignore[return-value]

    def cam_maps(
        self, model: nn.Module, inputs: Tensor, target: Tensor, generator: torch.Generator
    ) -> Tensor:
        """Grad-CAM as captum's LayerGradCam computes it, on a tapped graph value that may be tokens."""
        count_passes(len(inputs), backward=True)
        chosen = self.context.gradcam
        tap = model.get_submodule(model.tap(chosen.value))
        captured: list[Tensor] = []
        handle = tap.register_forward_hook(lambda _m, _i, output: captured.append(output))
        try:
            with torch.enable_grad():
                logits = model(inputs.detach().requires_grad_(True))
                score = logits.gather(1, target.view(-1, 1)).sum()
                gradients = torch.autograd.grad(score, captured[0])[0]
        finally:
            handle.remove()
        activations = as_feature_map(chosen, captured[0].detach())
        gradients = as_feature_map(chosen, gradients)
        weights = gradients.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * activations).sum(dim=1, keepdim=True))
        mode = self.context.settings.gradcam_upsampling.value
        corners = False if mode == "bilinear" else None  # nearest has no corners to align
        cam = F.interpolate(cam, size=inputs.shape[-2:], mode=mode, align_corners=corners)
        peak = cam.flatten(1).max(dim=1).values.view(-1, 1, 1, 1)
        return torch.where(peak > 0, cam / peak.clamp_min(torch.finfo(cam.dtype).tiny), torch.zeros_like(cam))


class GuidedGradCam(SaliencyMethod):
    """Guided Backprop x GradCAM: the product of the two methods' maps of the same stage, computed once
    for the three of them where they run together."""

    name = "guided_gradcam"
    family = GUIDED_GRADCAM_PARTS
    reads_gradcam_layer = True

    def __init__(self, context) -> None:  # type: ignore[no-untyped-def]
        super().__init__(context)
        self._guided = GuidedBackprop(context)
        self._cam = GradCam(context)

    def parameters(self) -> dict[str, float | int | str | None]:
        return self._guided.parameters() | self._cam.parameters()

    def check_supported(self, model: nn.Module, example: Tensor) -> None:
        refuse_non_relu(self.name, model)
        refuse_unreadable_target(self.name, self.context.gradcam, model)

    def parts(self) -> dict[str, PartFn]:
        return self._guided.parts() | self._cam.parts()

    def combine(self, parts: dict[str, Tensor | tuple[Tensor, ...]], inputs: Tensor) -> Tensor:
        return parts[GUIDED] * parts[CAM]  # type: ignore[operator]
