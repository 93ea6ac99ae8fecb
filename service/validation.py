"""Cheap checks of an upload, so a client learns of a bad file at once rather than after queueing.

Models: the format is sniffed from the bytes (pickles refused) and ONNX graphs go through onnx's checker.
Image sets: arrays are read without pickles, images are decoded within the pixel cap. Settings-dependent
checks (preprocessing, shapes) happen when a job names the artifact; the full ones when it runs.
"""

from pathlib import Path
from typing import Any

import onnx

from workers.engine.errors import ProbeError, UnsafeArtifactError
from workers.engine.formats import parse_onnx, read_artifact, sniff_format
from workers.engine.probes import MAX_TRAINING_IMAGES, inspect_probe_file
from workers.requests import ArtifactKind


def validate_artifact(path: Path, kind: ArtifactKind, max_probe_images: int) -> tuple[str, dict[str, Any]]:
    """The artifact's format and what validation learned; raises ``AuditInputError`` for a bad file."""
    if kind is ArtifactKind.model:
        return _validate_model(path)
    info = inspect_probe_file(path, max_probe_images if kind is ArtifactKind.probes else MAX_TRAINING_IMAGES)
    if kind is ArtifactKind.training_data and not info.labelled:
        raise ProbeError(f"{path.name}: training data needs labels (a 'y' array, or images in class folders)")
    return info.format, {"images": info.images, "labelled": info.labelled}


def _validate_model(path: Path) -> tuple[str, dict[str, Any]]:
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
