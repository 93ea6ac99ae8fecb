"""Cheap checks of an upload, so a client learns of a bad file at once rather than after queueing.

Models: the format is sniffed from the bytes (pickles, external data and foreign zip members refused) and
ONNX graphs go through onnx's checker. Image sets: only headers are read (array headers, image headers),
never pixels or array data, and held to the image, pixel and zip caps; the details record what they say
(``images``, ``labelled``, ``shape`` [C, H, W] when shared, ``channels``) so settings can be checked
against them without decoding. The full decode happens when a job runs, in the worker.
"""

import threading
from pathlib import Path
from typing import Any

import onnx

from workers.core.errors import ProbeError, UnsafeArtifactError
from workers.core.formats import parse_onnx, read_artifact, sniff_format
from workers.core.probes import MAX_TRAINING_IMAGES, inspect_probe_file
from workers.core.requests import ArtifactKind


def validate_artifact(
    path: Path, kind: ArtifactKind, max_probe_images: int, max_probe_set_pixels: int
) -> tuple[str, dict[str, Any]]:
    """The artifact's format and what validation learned; raises ``AuditInputError`` for a bad file."""
    if kind is ArtifactKind.model:
        return _validate_model(path)
    max_images = max_probe_images if kind is ArtifactKind.probes else MAX_TRAINING_IMAGES
    info = inspect_probe_file(path, max_images, max_probe_set_pixels)
    if kind is ArtifactKind.training_data and not info.labelled:
        raise ProbeError(f"{path.name}: training data needs labels (a 'y' array, or images in class folders)")
    shape = None if info.shape is None else list(info.shape)
    details = {"images": info.images, "labelled": info.labelled, "shape": shape, "channels": info.channels}
    return info.format, details


_MODEL_CHECKS = threading.BoundedSemaphore(2)  # each holds about four copies of a file of up to 512 MiB


def _validate_model(path: Path) -> tuple[str, dict[str, Any]]:
    with _MODEL_CHECKS:
        return _check_model(path)


def _check_model(path: Path) -> tuple[str, dict[str, Any]]:
    data = read_artifact(path)
    format = sniff_format(data, path.name)
    if format != "onnx":
        return format, {}
    model = parse_onnx(data, path.name)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as error:
        first_line = str(error).strip().splitlines()[0]
        raise UnsafeArtifactError(f"{path.name}: not a valid ONNX model ({first_line})") from None
    initializers = {tensor.name for tensor in model.graph.initializer}
    inputs = [
        {"name": value.name, "shape": [dim.dim_value or dim.dim_param or None for dim in _dims(value)]}
        for value in model.graph.input
        if value.name not in initializers
    ]
    opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)
    return format, {"opset": opset, "inputs": inputs}


def _dims(value: onnx.ValueInfoProto) -> list[onnx.TensorShapeProto.Dimension]:
    return list(value.type.tensor_type.shape.dim)
