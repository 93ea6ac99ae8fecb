"""Check the torch rebuild against the original artifact on every probe image before any map is made.

A rebuilt model that disagrees with the uploaded one would give maps of some other model: the audit
refuses rather than report them. Predicted classes must agree too, since maps explain the predicted class.
"""

import logging

import numpy as np
import torch

from workers.core.errors import AuditInputError, ModelConversionError, ProbeError
from workers.core.report import ConversionCheck
from workers.engine.artifacts import LoadedModel

log = logging.getLogger(__name__)


def verify_conversion(
    loaded: LoadedModel, x: np.ndarray, *, atol: float, rtol: float, batch_size: int = 64
) -> ConversionCheck:
    """Run rebuild and reference on all of ``x`` in batches; raise unless every output is within
    ``atol + rtol * |reference|`` and every argmax agrees."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    _check_probe_shape(loaded, x)
    output = loaded.reference_output or loaded.module.output_name
    worst, outside, agree, non_finite = 0.0, 0, 0, 0
    for start in range(0, len(x), batch_size):
        ours, reference = _outputs(loaded, x[start : start + batch_size], output)
        non_finite += int((~np.isfinite(reference)).any(axis=1).sum())
        difference = np.abs(ours - reference)
        within = difference <= atol + rtol * np.abs(reference)  # False for NaN
        worst = max(worst, float(np.where(np.isnan(difference), np.inf, difference).max(initial=0.0)))
        outside += int((~within).sum())
        agree += int((ours.argmax(axis=1) == reference.argmax(axis=1)).sum())
    if non_finite:
        raise AuditInputError(
            f"{loaded.artifact.filename} outputs NaN or infinite values on {non_finite} of {len(x)} probe "
            f"images in its own runtime ({loaded.reference_runtime}); gradients of such outputs are "
            "undefined, so the audit stops. Check the model and the probes' preprocessing"
        )
    if outside or agree < len(x):
        what = "logit" if output == loaded.module.output_name else f"output {output!r}"
        raise ModelConversionError(
            f"the torch rebuild of {loaded.artifact.filename} does not match {loaded.reference_runtime} on "
            f"the probe images: max |{what} difference| {worst:.3g} with tolerance atol={atol:g} + "
            f"rtol={rtol:g}·|reference| ({outside} values outside it), predicted class differs on "
            f"{len(x) - agree} of {len(x)} images. Saliency maps of a model that does not match the uploaded "
            "one would be wrong, so the audit stops"
        )
    return ConversionCheck(
        reference_runtime=loaded.reference_runtime,
        n_images=len(x),
        max_abs_logit_diff=worst,
        atol=atol,
        rtol=rtol,
        argmax_agreement=agree / len(x),
    )


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"


def _check_probe_shape(loaded: LoadedModel, x: np.ndarray) -> None:
    expected = loaded.module.input_shape
    fits = x.ndim == len(expected) and all(
        e is None or e == a for e, a in zip(expected, x.shape, strict=True)
    )
    if len(x) == 0 or not fits:
        raise ProbeError(
            f"{loaded.artifact.filename} expects input of shape {_shape_text(expected)}, "
            f"the probes have shape {tuple(x.shape)}"
        )


def _outputs(loaded: LoadedModel, batch: np.ndarray, output: str) -> tuple[np.ndarray, np.ndarray]:
    """Both outputs as float32 [N, classes]; a model that cannot take the probes is a ProbeError."""
    try:
        with torch.no_grad():
            ours = loaded.module.run(torch.from_numpy(batch), output).float().numpy()
        reference = np.asarray(loaded.reference(batch), dtype=np.float32)
    except AuditInputError:
        raise
    except Exception:  # torch, onnxruntime and exported programs each raise their own types, logged here
        log.warning("%s cannot run on the probes", loaded.artifact.filename, exc_info=True)
        raise ProbeError(
            f"{loaded.artifact.filename} cannot run on the probes (shape {tuple(batch.shape)[1:]} per image; "
            f"the model expects {_shape_text(loaded.module.input_shape)})"
        ) from None
    if ours.shape != reference.shape or ours.ndim != 2:
        raise ModelConversionError(
            f"the torch rebuild of {loaded.artifact.filename} returns shape {ours.shape}, "
            f"{loaded.reference_runtime} returns {reference.shape}; the engine expects [N, classes] logits"
        )
    return ours, reference
