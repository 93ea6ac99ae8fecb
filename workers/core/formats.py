"""Recognize a model file from its bytes, without torch, so the HTTP service can refuse a bad upload at once.

The format is read from the bytes, never the extension. Pickles (raw or inside a ``torch.save`` zip) are
refused: unpickling runs arbitrary code. ONNX models that keep weights in external data are refused too
(their locations are paths on the machine that loads them), and the refusal never repeats the location.

TorchScript archives are accepted only as ``torch.jit.save`` writes them for a program: ``data.pkl``,
``constants.pkl``, ``code/`` and the tensor and version records (``TORCHSCRIPT_MEMBER``), all under one
folder. Extra files (``torch.jit.save(..., _extra_files=...)``, stored under ``extra/``) and any other
member, such as a pickle slipped in beside the program, are refused: the engine never reads them, so
accepting them would only let an upload carry content nobody checked.

Every zip, a model or a probe set, goes through ``open_zip`` first: its central directory, what it
declares its members unpack to and their compression are bounded before a byte is decompressed.
"""

import io
import pickletools
import re
import stat
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

import onnx
from google.protobuf.message import DecodeError
from onnx.external_data_helper import uses_external_data

from workers.core.errors import AuditInputError, UnsafeArtifactError

MAX_ARTIFACT_BYTES = 2 * 1024**3  # protobuf's own limit for a single-file ONNX model
MAX_MODEL_ZIP_ENTRIES = 100_000  # TorchScript and .pt2 archives hold one entry per tensor, plus code
# zipfile parses the whole central directory on open, about 500 bytes of memory per entry whatever the end
# record says; an entry takes 46 bytes plus its name, so this allowance per expected entry bounds that.
CENTRAL_DIRECTORY_BYTES_PER_ENTRY = 256
ZIP_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})  # bzip2 and lzma ignore read sizes
MAX_COMPRESSION_RATIO = 200  # deflated real data stays far below; deflated zeros reach about 1000
RATIO_CHECKED_ABOVE = 1024**2  # small members may compress far (zero padding) and cost nothing
PICKLE_OPCODES_SEEN = 100_000  # that many valid pickle opcodes in a row is a pickle, not chance
TORCHSCRIPT_MEMBER = re.compile(
    r"(data|constants|traced_inputs)\.pkl|(data|constants|traced_inputs)/\d+"
    r"|code/(\w+/)*\w+\.py(\.debug_pkl)?"
    r"|version|byteorder|\.data/version|\.data/serialization_id|\.format_version|\.storage_alignment",
    re.ASCII,
)

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
    """Protocol 2+ pickles open with PROTO (0x80); older ones are a run of valid opcodes ending in STOP.

    The scan stops after ``PICKLE_OPCODES_SEEN`` opcodes, so a long file costs no more than a short one.
    """
    if data[:1] == b"\x80":
        return True
    last = None
    try:
        for count, (opcode, _, _) in enumerate(pickletools.genops(data)):  # parses opcodes, executes nothing
            if count >= PICKLE_OPCODES_SEEN:
                return True
            last = opcode.name
    except Exception:  # any malformed opcode stream: not a pickle
        return False
    return last == "STOP"


def open_zip(
    source: Path | bytes, name: str, error: type[AuditInputError], max_entries: int, max_unpacked_bytes: int
) -> zipfile.ZipFile:
    """Open a zip whose directory, declared sizes, compression and member names are within bounds.

    Reading a member never yields more than its declared size (``ZipExtFile`` stops there and checks the
    CRC), so the declared sizes bound what reading produces, as long as reads ask for bounded chunks:
    deflate honours the chunk size, bzip2 and lzma do not, hence only stored and deflated members. Absolute
    names, ``..``, backslashes and symbolic links are refused although nothing is ever extracted: no honest
    archive holds them. ``BadZipFile`` and the other errors of a damaged zip are the caller's to translate.
    """
    with source.open("rb") if isinstance(source, Path) else io.BytesIO(source) as file:
        end = zipfile._EndRecData(file)  # the end record is not public API; zipfile itself relies on it
    if end is None:
        raise zipfile.BadZipFile("File is not a zip file")
    directory_bytes = end[zipfile._ECD_SIZE]
    if directory_bytes > max_entries * CENTRAL_DIRECTORY_BYTES_PER_ENTRY:
        raise error(
            f"{name}: the zip's directory takes {directory_bytes} bytes; at most {max_entries} entries "
            f"({max_entries * CENTRAL_DIRECTORY_BYTES_PER_ENTRY} bytes) are read"
        )
    bundle = zipfile.ZipFile(source if isinstance(source, Path) else io.BytesIO(source))
    try:
        _check_zip_members(bundle.infolist(), name, error, max_entries, max_unpacked_bytes)
    except BaseException:
        bundle.close()
        raise
    return bundle


def _check_zip_members(
    members: list[zipfile.ZipInfo],
    name: str,
    error: type[AuditInputError],
    max_entries: int,
    max_unpacked_bytes: int,
) -> None:
    if len(members) > max_entries:
        raise error(f"{name}: the zip holds {len(members)} entries; at most {max_entries} are read")
    if sum(member.file_size for member in members) > max_unpacked_bytes:
        raise error(f"{name}: the zip unpacks to more than {max_unpacked_bytes} bytes (zip bomb guard)")
    for member in members:
        shown = shown_name(member.filename)
        if not _is_safe_member(member):
            raise error(
                f"{name}: member {shown} points outside the archive (an absolute name, '..', a backslash "
                "or a link); such archives are refused"
            )
        if member.compress_type not in ZIP_METHODS:
            raise error(f"{name}: member {shown} is compressed with a method other than stored or deflate")
        if member.file_size > max(RATIO_CHECKED_ABOVE, MAX_COMPRESSION_RATIO * member.compress_size):
            raise error(
                f"{name}: member {shown} declares {member.file_size} bytes from {member.compress_size}, "
                f"more than {MAX_COMPRESSION_RATIO} times its compressed size (zip bomb guard)"
            )


def _is_safe_member(member: zipfile.ZipInfo) -> bool:
    """A relative name without ``..`` or backslash, and not a symbolic link (Unix mode bits)."""
    return not (
        member.filename.startswith("/")
        or ".." in member.filename.split("/")
        or "\\" in member.filename
        or stat.S_ISLNK(member.external_attr >> 16)
    )


def shown_name(name: str, limit: int = 80) -> str:
    """A member name as messages show it, cut to ``limit`` characters (names are the uploader's), and as a
    Python literal when it holds control or other unprintable characters."""
    text = name if name.isprintable() else repr(name)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _zip_format(data: bytes, filename: str) -> ArtifactFormat:
    """TorchScript archives hold ``code/`` and ``constants.pkl``; torch.export ones ``archive_format`` = pt2;
    a ``data.pkl`` alone is a torch.save checkpoint, i.e. a pickle."""
    try:
        with open_zip(
            data, filename, UnsafeArtifactError, MAX_MODEL_ZIP_ENTRIES, MAX_ARTIFACT_BYTES
        ) as archive:
            names = [member.filename for member in archive.infolist() if not member.is_dir()]
            entries = {name.split("/", 1)[1]: name for name in names if "/" in name}
            if "constants.pkl" in entries and any(entry.startswith("code/") for entry in entries):
                _check_torchscript_layout(names, filename)
                return "torchscript"
            if "archive_format" in entries:
                with archive.open(entries["archive_format"]) as marker:
                    if marker.read(16).strip() == b"pt2":
                        return "torch_export"
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError, OSError, UnicodeDecodeError):
        raise UnsafeArtifactError(f"{filename} is a damaged zip archive. {EXPORT_ADVICE}") from None
    if "data.pkl" in entries:
        raise UnsafeArtifactError(
            f"{filename} is a torch.save checkpoint (a pickled module or state dict in a zip). Loading it "
            f"runs arbitrary code, so the engine refuses it. {EXPORT_ADVICE}"
        )
    raise UnsafeArtifactError(
        f"{filename} is a zip archive but not a TorchScript or torch.export file. {EXPORT_ADVICE}"
    )


def _check_torchscript_layout(names: list[str], filename: str) -> None:
    """Only what ``torch.jit.save`` writes for a program, under one folder (module docstring)."""
    roots = {name.split("/", 1)[0] for name in names}
    unexpected = [
        name
        for name in names
        if "/" not in name or len(roots) > 1 or not TORCHSCRIPT_MEMBER.fullmatch(name.split("/", 1)[1])
    ]
    if unexpected:
        shown = ", ".join(shown_name(name) for name in unexpected[:3])
        more = f" and {len(unexpected) - 3} more" if len(unexpected) > 3 else ""
        raise UnsafeArtifactError(
            f"{filename} is a TorchScript archive with members TorchScript does not write for a program "
            f"({shown}{more}); extra files (torch.jit.save's _extra_files) and anything added to the "
            "archive are refused. Save the program again without them: torch.jit.save(program, path)"
        )


def parse_onnx(data: bytes, filename: str) -> onnx.ModelProto:
    try:
        model = onnx.load_model_from_string(data)  # from bytes: never follows external-data paths
    except (DecodeError, ValueError, RuntimeError):
        model = None
    if model is None or not model.HasField("graph"):
        raise UnsafeArtifactError(
            f"{filename} looks like ONNX but cannot be read: the file is truncated or corrupt"
        )
    if any(_external(tensor) for tensor in _model_tensors(model)):
        raise UnsafeArtifactError(
            f"{filename} keeps weights in external data files; only single-file models are accepted "
            "(external data paths have a history of path-traversal bugs). Export it as one file: "
            "torch.onnx.export(..., external_data=False) (the dynamo exporter's default is True), or "
            "onnx.save_model(model, path, save_as_external_data=False)"
        )
    return model


def _external(tensor: onnx.TensorProto) -> bool:
    """Marked external, or naming a location at all (onnxruntime reads what it is pointed at)."""
    return uses_external_data(tensor) or len(tensor.external_data) > 0


def _model_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    yield from _tensors(model.graph)
    for function in model.functions:
        yield from _node_tensors(function.node)


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    yield from _sparse_tensors(graph.sparse_initializer)
    yield from _node_tensors(graph.node)


def _sparse_tensors(sparse: Iterable[onnx.SparseTensorProto]) -> Iterator[onnx.TensorProto]:
    for tensor in sparse:
        yield from (tensor.values, tensor.indices)


def _node_tensors(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            yield from _sparse_tensors(
                [*([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []), *attr.sparse_tensors]
            )
            for subgraph in [*([attr.g] if attr.HasField("g") else []), *attr.graphs]:
                yield from _tensors(subgraph)
