"""Recognize a model file from its bytes, without torch, so the HTTP service can refuse a bad upload at once.

The format is read from the bytes, never the extension. Pickles (raw or inside a ``torch.save`` zip) are
refused: unpickling runs arbitrary code. ONNX models that keep weights in external data are refused too.
"""

import io
import pickletools
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import onnx
from google.protobuf.message import DecodeError
from onnx.external_data_helper import uses_external_data

from workers.engine.errors import UnsafeArtifactError

MAX_ARTIFACT_BYTES = 2 * 1024**3  # protobuf's own limit for a single-file ONNX model

ArtifactFormat = Literal["onnx", "torchscript", "torch_export"]

_ZIP_MAGIC = b"PK\x03\x04"
EXPORT_ADVICE = (
    "Export the model as ONNX (torch.onnx.export with a dynamic batch dimension), TorchScript "
    "(torch.jit.script(model).save(path)) or torch.export (torch.export.save(program, path), a .pt2 file)."
)


def read_artifact(path: Path) -> bytes:
    size = path.stat().st_size
    if size > MAX_ARTIFACT_BYTES:
        raise UnsafeArtifactError(
            f"{path.name} is {size / 2**30:.1f} GiB; model files are limited to "
            f"{MAX_ARTIFACT_BYTES / 2**30:g} GiB"
        )
    return path.read_bytes()


def format_label(kind: ArtifactFormat) -> str:
    return {"onnx": "ONNX", "torchscript": "TorchScript", "torch_export": "torch.export"}[kind]


def sniff_format(data: bytes, filename: str) -> ArtifactFormat:
    if data.startswith(_ZIP_MAGIC):
        return _zip_format(data, filename)
    if _is_pickle(data):
        raise UnsafeArtifactError(
            f"{filename} is a Python pickle (e.g. torch.save of a model or state dict). Loading a pickle "
            f"runs arbitrary code, so the engine refuses it. {EXPORT_ADVICE}"
        )
    if data[:1] == b"\x08":  # field 1 (ir_version, a varint) opens every serialized ONNX ModelProto
        return "onnx"
    raise UnsafeArtifactError(f"{filename} is not an ONNX, TorchScript or torch.export file. {EXPORT_ADVICE}")


def _is_pickle(data: bytes) -> bool:
    """Protocol 2+ pickles open with PROTO (0x80); older ones are a run of valid opcodes ending in STOP."""
    if data[:1] == b"\x80":
        return True
    try:
        last = None
        for opcode, _, _ in pickletools.genops(data):  # parses opcodes, executes nothing
            last = opcode.name
    except Exception:  # any malformed opcode stream: not a pickle
        return False
    return last == "STOP"


def _zip_format(data: bytes, filename: str) -> ArtifactFormat:
    """TorchScript archives hold ``code/`` and ``constants.pkl``; torch.export ones ``archive_format`` = pt2;
    a ``data.pkl`` alone is a torch.save checkpoint, i.e. a pickle."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        entries = {name.split("/", 1)[1]: name for name in archive.namelist() if "/" in name}
        if "constants.pkl" in entries and any(entry.startswith("code/") for entry in entries):
            return "torchscript"
        if "archive_format" in entries and archive.read(entries["archive_format"]).strip() == b"pt2":
            return "torch_export"
    except (zipfile.BadZipFile, KeyError, OSError):
        raise UnsafeArtifactError(f"{filename} is a damaged zip archive. {EXPORT_ADVICE}") from None
    if "data.pkl" in entries:
        raise UnsafeArtifactError(
            f"{filename} is a torch.save checkpoint (a pickled module or state dict in a zip). Loading it "
            f"runs arbitrary code, so the engine refuses it. {EXPORT_ADVICE}"
        )
    raise UnsafeArtifactError(
        f"{filename} is a zip archive but not a TorchScript or torch.export file. {EXPORT_ADVICE}"
    )


def parse_onnx(data: bytes, filename: str) -> onnx.ModelProto:
    try:
        model = onnx.load_model_from_string(data)  # from bytes: never follows external-data paths
    except DecodeError:
        model = None
    if model is None or not model.HasField("graph"):
        raise UnsafeArtifactError(
            f"{filename} looks like ONNX but cannot be read: the file is truncated or corrupt"
        )
    if any(uses_external_data(tensor) for tensor in _tensors(model.graph)):
        raise UnsafeArtifactError(
            f"{filename} keeps weights in external data files; only single-file models are accepted "
            "(external data paths have a history of path-traversal bugs). Export it as one file: "
            "torch.onnx.export(..., external_data=False) (the dynamo exporter's default is True), or "
            "onnx.save_model(model, path, save_as_external_data=False)"
        )
    return model


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    yield from (sparse.values for sparse in graph.sparse_initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for subgraph in [*([attr.g] if attr.HasField("g") else []), *attr.graphs]:
                yield from _tensors(subgraph)
