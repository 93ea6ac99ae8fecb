"""Hostile uploads, built in memory: each function returns the bytes of one file an attacker might send.

Bombs are built small: a deflate stream of zeros is cut into blocks with a full flush after each, so every
block is the same bytes and a stream that unpacks to gigabytes is one block repeated. Nothing here touches
the network or a file outside the test's own folder.
"""

import functools
import io
import pickle
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

MIB = 1024**2
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --- building blocks --------------------------------------------------------------------------------------


@functools.cache
def _zero_block() -> tuple[bytes, bytes]:
    """One MiB of zeros as a raw deflate block ending in a full flush, and the stream's closing block."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(MIB)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return block, compressor.flush()


def deflated_zeros(mib: int) -> bytes:
    """A raw deflate stream that unpacks to ``mib`` MiB of zeros, about 1 KiB per MiB."""
    block, end = _zero_block()
    return block * mib + end


def zlib_zeros(mib: int) -> bytes:
    """The same as a zlib stream (header and Adler-32), as PNG text chunks hold it."""
    size = mib * MIB
    adler = ((size % 65521) << 16) | 1  # Adler-32 of zeros: a stays 1, b adds 1 per byte
    return b"\x78\xda" + deflated_zeros(mib) + struct.pack(">I", adler)


@functools.cache
def crc32_of_zeros(mib: int) -> int:
    crc, block = 0, bytes(MIB)
    for _ in range(mib):
        crc = zlib.crc32(block, crc)
    return crc


@dataclass(frozen=True)
class RawMember:
    """A zip member written byte by byte, so it can say what zipfile would never write."""

    name: bytes
    data: bytes  # as stored: compressed when method is deflate
    size: int  # the uncompressed size it declares
    crc: int
    method: int = zipfile.ZIP_DEFLATED
    flags: int = 0
    mode: int = stat.S_IFREG | 0o644


def raw_zip(members: list[RawMember]) -> bytes:
    """A zip (no zip64: every size below 4 GiB) of members exactly as given."""
    local, central = bytearray(), bytearray()
    for m in members:
        offset = len(local)
        sizes = (m.crc, len(m.data), m.size, len(m.name))
        local += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, m.flags, m.method, 0, 0x21, *sizes, 0)
        local += m.name + m.data
        central += struct.pack(
            "<4s6H3L5H2L",
            b"PK\x01\x02",
            0x031E,
            20,
            m.flags,
            m.method,
            0,
            0x21,
            *sizes,
            0,
            0,
            0,
            0,
            m.mode << 16,
            offset,
        )
        central += m.name
    end = struct.pack(
        "<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), len(local), 0
    )
    return bytes(local + central + end)


def zip_of(files: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as bundle:
        for name, data in files.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(
    width: int = 8,
    height: int = 8,
    fill: int = 0,
    idat: bytes | None = None,
    before_idat: tuple[bytes, ...] = (),
    after_idat: tuple[bytes, ...] = (),
) -> bytes:
    """A grey 8-bit PNG written chunk by chunk, every pixel ``fill`` unless ``idat`` says otherwise."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress((b"\0" + bytes([fill]) * width) * height, 9) if idat is None else idat
    chunks = [
        _chunk(b"IHDR", header),
        *before_idat,
        _chunk(b"IDAT", pixels),
        *after_idat,
        _chunk(b"IEND", b""),
    ]
    return PNG_SIGNATURE + b"".join(chunks)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=True, **arrays)
    return buffer.getvalue()


def good_png() -> bytes:
    return png()


# --- images -----------------------------------------------------------------------------------------------


def png_ztxt_bomb() -> bytes:
    """An 8 x 8 PNG whose zTXt chunk unpacks to 200 MB (PIL refuses text over 1 MB on open: ValueError)."""
    return png(before_idat=(_chunk(b"zTXt", b"Comment\0\0" + zlib_zeros(200)),))


def png_itxt_bomb() -> bytes:
    """The same with a compressed iTXt chunk (keyword, compression flag and method, language, keyword)."""
    return png(before_idat=(_chunk(b"iTXt", b"Comment\0\1\0en\0Comment\0" + zlib_zeros(200)),))


def png_ztxt_bomb_after_pixels() -> bytes:
    """The text bomb after IDAT: opening stops at IDAT, so only decoding meets it."""
    return png(after_idat=(_chunk(b"zTXt", b"Comment\0\0" + zlib_zeros(200)),))


def png_dimension_bomb(side: int = 50_000) -> bytes:
    """A header declaring side x side pixels over a one-byte pixel stream."""
    return png(side, side, idat=zlib.compress(b"\0"))


def png_cut_in_header() -> bytes:
    return good_png()[:20]


def png_cut_in_pixels() -> bytes:
    data = png(64, 64, idat=zlib.compress(np.random.default_rng(0).bytes(65 * 64), 0))
    return data[: len(data) // 2]


def png_corrupt_pixels() -> bytes:
    """A valid header and end over a pixel stream that is not zlib: only decoding finds out."""
    return png(idat=b"\x00not zlib at all, but the chunk's CRC is right")


def black_png(side: int = 4096) -> bytes:
    return png(side, side)


def gif_bytes() -> bytes:
    return b"GIF89a\x08\x00\x08\x00\x00\x00\x00,\x00\x00\x00\x00\x08\x00\x08\x00\x00\x02\x02D\x01\x00;"


def bmp_bytes() -> bytes:
    pixels = bytes(8 * 8 * 3)
    header = struct.pack("<2sIHHI", b"BM", 54 + len(pixels), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, 8, 8, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    return header + info + pixels


def webp_bytes() -> bytes:
    return b"RIFF\x1a\x00\x00\x00WEBPVP8L\x0d\x00\x00\x00\x2f\x07\xc0\x01\x00\x07\x10\xfd\x8f\xfe\x07\x00"


def tiff_bytes() -> bytes:
    return b"II*\x00\x08\x00\x00\x00\x00\x00"


# --- zips of images -------------------------------------------------------------------------------------


def zip_of_pngs(count: int = 3) -> bytes:
    return zip_of({f"{index:03d}.png": good_png() for index in range(count)})


def zip_with(name: str, data: bytes) -> bytes:
    """Two good images and one more member."""
    return zip_of({"000.png": good_png(), "001.png": good_png(), name: data})


def zip_slip() -> bytes:
    return zip_with("../../evil.png", good_png())


def zip_absolute_member() -> bytes:
    return zip_with("/etc/evil.png", good_png())


def zip_backslash_member() -> bytes:
    return zip_with("..\\..\\evil.png", good_png())


def zip_symlink_member() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("000.png", good_png())
        link = zipfile.ZipInfo("001.png")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        bundle.writestr(link, "/etc/passwd")
    return buffer.getvalue()


def zip_bomb(name: str = "001.png", mib: int = 2048) -> bytes:
    """A member declaring ``mib`` MiB (2 GiB by default) of zeros from about 2 MB, beside a good image."""
    good = good_png()
    return raw_zip(
        [
            RawMember(b"000.png", good, len(good), zlib.crc32(good), method=zipfile.ZIP_STORED),
            RawMember(name.encode(), deflated_zeros(mib), mib * MIB, crc32_of_zeros(mib)),
        ]
    )


def zip_lying_about_size() -> bytes:
    """A 64 MiB stream of zeros declared as 1000 bytes: reading stops at 1000, which are no image."""
    good = good_png()
    return raw_zip(
        [
            RawMember(b"000.png", good, len(good), zlib.crc32(good), method=zipfile.ZIP_STORED),
            RawMember(b"001.png", deflated_zeros(64), 1000, zlib.crc32(bytes(1000))),
        ]
    )


def zip_bzip2_member() -> bytes:
    return zip_of({"000.png": good_png(), "001.png": good_png()}, zipfile.ZIP_BZIP2)


def zip_encrypted_member() -> bytes:
    good = good_png()
    return raw_zip(
        [
            RawMember(f"{i:03d}.png".encode(), good, len(good), zlib.crc32(good), zipfile.ZIP_STORED, 1)
            for i in (0, 1)
        ]
    )


def zip_undecodable_name() -> bytes:
    """A name flagged UTF-8 (bit 11) that is not UTF-8."""
    good = good_png()
    names = [b"000.png", b"\xff\xfe.png"]
    return raw_zip(
        [RawMember(n, good, len(good), zlib.crc32(good), zipfile.ZIP_STORED, 0x800) for n in names]
    )


def zip_many_entries(entries: int = 2500) -> bytes:
    return zip_of({f"{index:05d}.txt": b"" for index in range(entries)}, zipfile.ZIP_STORED)


def zip_long_names(entries: int = 300) -> bytes:
    """A central directory of about 600 KB from long names."""
    return zip_of({f"{index:05d}" + "n" * 2000 + ".txt": b"" for index in range(entries)}, zipfile.ZIP_STORED)


def zip_duplicate_names() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("000.png", good_png())
        bundle.writestr("001.png", good_png())
        bundle.writestr("./001.png", good_png())
    return buffer.getvalue()


def zip_file_and_folder_of_one_name() -> bytes:
    """``001.png`` both an image and a folder: unpacking would fail on the file system."""
    return zip_of({"000.png": good_png(), "001.png": good_png(), "001.png/002.png": good_png()})


def zip_of_black_pngs(count: int = 200, side: int = 4096) -> bytes:
    """One black side x side PNG (about 20 KB) under ``count`` names: 3.4 G pixels at 200 x 4096 x 4096."""
    image = black_png(side)
    return zip_of({f"{index:03d}.png": image for index in range(count)}, zipfile.ZIP_STORED)


def empty_zip() -> bytes:
    return zip_of({})


def truncated_zip() -> bytes:
    data = zip_of_pngs()
    return data[: len(data) - 30]


# --- arrays -----------------------------------------------------------------------------------------------


def npz_object_array() -> bytes:
    return _npz(x=np.array([{"a": 1}, {"b": 2}], dtype=object))


def npy_object_array() -> bytes:
    return _npy(np.array([{"a": 1}, {"b": 2}], dtype=object))


def npy_header(shape: tuple[int, ...], descr: str = "<f4", data: bytes = bytes(1024)) -> bytes:
    """A .npy header declaring ``shape`` followed by ``data``, whatever the shape needs."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


def npy_truncated() -> bytes:
    """50 images of 256 x 256 declared (13 MB), 1 KB stored."""
    return npy_header((50, 1, 256, 256))


def npy_huge_count() -> bytes:
    return npy_header((2**40, 1, 8, 8))


def npy_over_budget(side: int = 4096) -> bytes:
    """100 images of side x side declared: over any small pixel budget, and truncated too."""
    return npy_header((100, 1, side, side))


def npy_complex() -> bytes:
    return _npy(np.zeros((3, 1, 8, 8), np.complex64))


def npy_strings() -> bytes:
    return _npy(np.full((3, 1, 8, 8), "a"))


def npy_wrong_axes() -> bytes:
    return _npy(np.zeros((3, 64), np.float32))


def npy_bad_header() -> bytes:
    return np.lib.format.magic(1, 0) + struct.pack("<H", 16) + b"{'descr': os.sy}"


def npz_mismatched_labels() -> bytes:
    return _npz(x=np.zeros((3, 1, 8, 8), np.float32), y=np.array([0, 1]))


def npz_float_labels() -> bytes:
    return _npz(x=np.zeros((3, 1, 8, 8), np.float32), y=np.array([0.5, 1.0, 2.0]))


def npz_negative_labels() -> bytes:
    return _npz(x=np.zeros((3, 1, 8, 8), np.float32), y=np.array([0, -1, 2]))


def npz_object_labels() -> bytes:
    return _npz(x=np.zeros((3, 1, 8, 8), np.float32), y=np.array([{}, {}, {}], dtype=object))


def npz_bomb() -> bytes:
    """An x.npy member declaring 2 GiB (of zeros) from about 2 MB."""
    return raw_zip([RawMember(b"x.npy", deflated_zeros(2048), 2048 * MIB, crc32_of_zeros(2048))])


def npz_damaged() -> bytes:
    data = bytearray(_npz(x=np.arange(4000, dtype=np.float32).reshape(10, 1, 20, 20)))
    data[300:360] = bytes(60)  # inside the stored member's data: its CRC no longer matches
    return bytes(data)


def npz_unnamed_arrays() -> bytes:
    return _npz(a=np.zeros((3, 1, 8, 8), np.float32), b=np.zeros((3, 1, 8, 8), np.float32))


# --- models -----------------------------------------------------------------------------------------------


def _external(tensor: TensorProto, location: str) -> TensorProto:
    """``tensor`` with its data moved out to ``location`` (nothing is written there)."""
    onnx.external_data_helper.set_external_data(
        tensor, location=location, offset=0, length=len(tensor.raw_data)
    )
    tensor.ClearField("raw_data")
    return tensor


def onnx_model(external_location: str | None = None) -> bytes:
    """A one-Conv ONNX model; its weight in external data at ``external_location`` when given."""
    weight = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")
    if external_location is not None:
        weight = _external(weight, external_location)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 6, 6])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


def onnx_external_in_constant(location: str = "../../etc/passwd") -> bytes:
    """External data hidden in a Constant node's attribute rather than an initializer."""
    value = _external(numpy_helper.from_array(np.zeros(1, np.float32), "c"), location)
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=value), helper.make_node("Add", ["x", "c"], ["y"])],
        "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


def onnx_truncated() -> bytes:
    data = onnx_model()
    return data[: len(data) // 2]


def garbage() -> bytes:
    return b"\x42" + np.random.default_rng(0).bytes(4096)


def pickle_bytes(protocol: int) -> bytes:
    return pickle.dumps({"conv.weight": [1.0, 2.0], "conv.bias": [0.0]}, protocol=protocol)


def long_protocol_0_pickle() -> bytes:
    """A protocol 0 pickle of 300,000 opcodes: recognized without parsing to its end."""
    return pickle.dumps(list(range(100_000)), protocol=0)


def _small_module() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(72, 3)).eval()


def torch_save_state_dict() -> bytes:
    buffer = io.BytesIO()
    torch.save(_small_module().state_dict(), buffer)
    return buffer.getvalue()


@functools.cache
def torchscript(extra_files: tuple[tuple[str, str], ...] = ()) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(_small_module()), buffer, _extra_files=dict(extra_files))
    return buffer.getvalue()


def torchscript_with_extra_files() -> bytes:
    return torchscript((("notes.txt", "see https://example.invalid"),))


def torchscript_with_added_pickle() -> bytes:
    """A valid program with a pickle added beside it, outside the TorchScript layout."""
    buffer = io.BytesIO(torchscript())
    with zipfile.ZipFile(buffer, "a") as bundle:
        bundle.writestr("archive/payload.pkl", pickle_bytes(2))
    return buffer.getvalue()


def torchscript_bomb() -> bytes:
    """A zip whose marker member, which format sniffing reads, declares 2 GiB."""
    return raw_zip(
        [
            RawMember(b"archive/archive_format", deflated_zeros(2048), 2048 * MIB, crc32_of_zeros(2048)),
            RawMember(b"archive/version", b"3\n", 2, zlib.crc32(b"3\n"), method=zipfile.ZIP_STORED),
        ]
    )
