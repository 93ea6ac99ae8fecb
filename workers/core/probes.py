"""Probe images: a folder (or zip) of PNG/JPEG files or a .npy/.npz array, turned into the model's input.

Images are decoded only as PNG or JPEG (exotic decoders); files named as another image format (GIF, BMP,
TIFF, WebP) are refused rather than left out. An image whose header declares more than ``MAX_IMAGE_PIXELS``
pixels is refused before its pixels are decoded (decompression bombs), and so is a set whose headers add up
to more than its pixel budget: height x width x channels over all images, images counted with
``DECODED_CHANNELS`` (the most they are decoded with), arrays with the product of their shape. Arrays are
read with ``allow_pickle=False`` and must hold real integer or floating-point values; their .npy headers
(dtype, shape, and the bytes stored after them) are checked before any data is read. Images are decoded
with the channel count the model expects (or the one declared) but never resized unless a size is declared;
arrays are never resized or re-channelled. A mismatch with the model's input is an error that names both
shapes. The engine works on channels-first input [N, C, H, W], at least 3 x 3 pixels (the similarity
metrics need a 3 x 3 window).

Zips are read in place through ``formats.open_zip`` (bounded directory, declared sizes, compression and
member names), never extracted. ``inspect_probe_file`` runs at upload, in the API process: it reads headers
only and streams each member it uses once through zipfile's CRC check, so it decodes no pixel and loads no
image array; a damaged pixel stream passes it and is refused by ``load_probes`` (in the worker), which
decodes under the same caps. Messages name a set by its file name and an image by its path inside the set,
never a directory of the machine: they reach API clients.
"""

import functools
import hashlib
import itertools
import math
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

import numpy as np
from PIL import Image, UnidentifiedImageError

from workers.core.audit_settings import MAX_PROBE_SET_PIXELS, Layout, Preprocessing
from workers.core.errors import ProbeError
from workers.core.formats import open_zip, shown_name

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
OTHER_IMAGE_SUFFIXES = frozenset({".gif", ".bmp", ".tif", ".tiff", ".webp"})
IMAGE_FORMATS = ("PNG", "JPEG")
MAX_IMAGE_PIXELS = 4096 * 4096
DECODED_CHANNELS = 3  # images are decoded with 1 or 3 channels: the pixel budget counts 3
MIN_IMAGES = 2
MAX_TRAINING_IMAGES = 200_000
MIN_SIDE = 3  # SSIM and the other windowed similarity metrics need at least 3 x 3 pixels
MAX_ZIP_BYTES = 4 * 1024**3  # what the members of a probe zip may unpack to (zip bombs)
ZIP_ENTRIES_BESIDES_IMAGES = 1000  # class folders and stray files a zip of images may hold as well
MAX_CHANNELS_LAST_WIDTH = 4  # a "width" this small next to more channels than that is a channels-last axis
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk: the last 12 bytes of every complete PNG
READ_CHUNK = 1024**2
# what PIL raises on hostile or damaged data, from opening (text-chunk bombs: ValueError) to decoding
_DECODER_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    TypeError,
    struct.error,
    zlib.error,
)
# what zipfile raises on a damaged archive: bad CRC or headers, truncation, encryption, undecodable names
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    NotImplementedError,
    RuntimeError,
    EOFError,
    zlib.error,
    UnicodeDecodeError,
)

_ImageOpener = Callable[[], IO[bytes]]


@dataclass(frozen=True)
class ProbeSet:
    x: np.ndarray  # float32 [N, C, H, W], preprocessed
    labels: np.ndarray | None  # int64 [N]
    names: list[str]
    source: str
    sha256: str


@dataclass(frozen=True)
class ProbeFileInfo:
    """What an image set's headers say: kept with the upload, so settings can be checked without decoding."""

    format: str  # "npy", "npz" or "zip" (of PNG/JPEG images)
    images: int
    labelled: bool
    # one image's [C, H, W] when every image shares it; a 4-D array's item shape as stored ([C, H, W] under
    # layout NCHW, [H, W, C] under NHWC)
    shape: tuple[int, ...] | None
    channels: int | None  # images: 1 (grey) or 3 (colour) when all agree; 3-D arrays: 1; else None


@dataclass(frozen=True)
class _ImageHeader:
    format: str  # "PNG" or "JPEG"
    width: int
    height: int
    channels: int  # 1 for grey modes, 3 for colour ones (palette, RGB(A), CMYK)


def load_probes(
    path: Path,
    preprocessing: Preprocessing,
    expected_shape: tuple[int | None, ...] | None,
    max_images: int,
    max_total_pixels: int = MAX_PROBE_SET_PIXELS,
    model_layout: Layout = Layout.nchw,
) -> ProbeSet:
    """Read and preprocess probes; ``expected_shape`` is the model's input shape as [N, C, H, W] (None =
    dynamic), ``max_total_pixels`` the set's pixel budget (the service's max_probe_set_pixels), and
    ``model_layout`` the model's own input layout, which arrays are read in unless the settings say."""
    name = path.name
    if expected_shape is not None:
        _check_channels_first(expected_shape, "the model's input", name)
    if path.is_dir():
        raw, labels, names, digest = _read_image_folder(
            path, preprocessing, expected_shape, max_images, max_total_pixels
        )
        default_scale = 255.0
    elif path.suffix.lower() == ".zip":
        with _probe_zip(path, max_images) as bundle:
            entries = [
                (member, functools.partial(bundle.open, info)) for member, info in _zip_images(bundle, name)
            ]
            raw, labels = _read_images(
                entries, name, preprocessing, expected_shape, max_images, max_total_pixels
            )
        names, digest = [str(member) for member, _ in entries], _file_sha256(path)
        default_scale = 255.0
    elif path.suffix.lower() in {".npy", ".npz"}:
        _refuse_image_only_settings(name, preprocessing)
        raw, labels = _read_array(path, max_images, max_total_pixels)
        raw = _to_nchw(raw, preprocessing.layout or model_layout)
        names, digest = [f"{name}[{i}]" for i in range(len(raw))], _file_sha256(path)
        default_scale = 1.0 if np.issubdtype(raw.dtype, np.floating) else 255.0
    else:
        raise ProbeError(f"{name}: probes must be a folder or zip of PNG/JPEG images, or a .npy/.npz array")
    if len(raw) < MIN_IMAGES:
        raise ProbeError(f"{name}: {len(raw)} probe image(s); at least {MIN_IMAGES} are needed")
    # preprocessing below only rescales values: raw already has the final shape
    _check_channels_first(raw.shape, "the probes", name)
    _check_min_size(raw.shape, name)
    x = _normalize(raw.astype(np.float64), preprocessing, default_scale, name).astype(np.float32)
    if not np.isfinite(x).all():
        raise ProbeError(f"{name}: probes contain NaN or infinite values")
    _check_shape(x, expected_shape, name)
    return ProbeSet(x=x, labels=labels, names=names, source=name, sha256=digest)


def inspect_probe_file(path: Path, max_images: int, max_total_pixels: int) -> ProbeFileInfo:
    """``_inspect_probe_file``, and a set too small for any audit refused at once."""
    info = _inspect_probe_file(path, max_images, max_total_pixels)
    if info.images < MIN_IMAGES:
        raise ProbeError(f"{path.name}: {info.images} probe image(s); at least {MIN_IMAGES} are needed")
    return info


def _inspect_probe_file(path: Path, max_images: int, max_total_pixels: int) -> ProbeFileInfo:
    """Check an uploaded image set whatever its name, from its headers: what ``load_probes`` would refuse
    without knowing the settings (not yet known at upload), short of decoding.

    Arrays are not reshaped and images not resized, so a set of mixed sizes passes here and meets its size
    when a job names it.
    """
    magic = _magic(path)
    if magic.startswith(b"\x93NUMPY"):
        with path.open("rb") as file:
            shape = _image_array_header(file, path.stat().st_size, path.name, max_images, max_total_pixels)
        return _array_info("npy", shape, labelled=False)
    if not magic.startswith(b"PK"):
        raise ProbeError(f"{path.name}: not a .npy/.npz array or a zip of PNG/JPEG images")
    with _probe_zip(path, max_images) as bundle:
        if not _holds_only_arrays(bundle):
            return _inspect_image_zip(bundle, path.name, max_images, max_total_pixels)
        images, labels = _npz_members(bundle, path.name)
        with bundle.open(images) as file:
            shape = _image_array_header(file, images.file_size, path.name, max_images, max_total_pixels)
        _stream_tail(bundle, images)
        if labels is not None:
            _read_labels(bundle, labels, shape[0], path.name)
    return _array_info("npz", shape, labelled=labels is not None)


def check_label_range(labels: np.ndarray, classes: int, source: str) -> None:
    """Labels must name classes the model has."""
    if labels.max() >= classes:
        raise ProbeError(f"{source}: labels go up to {labels.max()}, but the model has {classes} classes")


# --- zips -----------------------------------------------------------------------------------------------


@contextmanager
def _probe_zip(path: Path, max_images: int) -> Iterator[zipfile.ZipFile]:
    """The zip opened within bounds; a damaged one, found on opening or while reading, is a ProbeError."""
    try:
        max_entries = max_images + ZIP_ENTRIES_BESIDES_IMAGES
        with open_zip(path, path.name, ProbeError, max_entries, MAX_ZIP_BYTES) as bundle:
            yield bundle
    except _ZIP_ERRORS as error:
        raise ProbeError(f"{path.name}: not a readable zip archive ({_reason(error)})") from None


def _holds_only_arrays(bundle: zipfile.ZipFile) -> bool:
    names = bundle.namelist()
    return bool(names) and all(name.endswith(".npy") for name in names)


def _zip_images(bundle: zipfile.ZipFile, set_name: str) -> list[tuple[PurePosixPath, zipfile.ZipInfo]]:
    """The image members by their path in the set, sorted; other members are left alone."""
    members = [member for member in bundle.infolist() if not member.is_dir()]
    paths = [PurePosixPath(member.filename) for member in members]
    by_path = dict(zip(paths, members, strict=True))
    return [(path, by_path[path]) for path in _image_paths(paths, set_name)]


def _inspect_image_zip(
    bundle: zipfile.ZipFile, set_name: str, max_images: int, max_total_pixels: int
) -> ProbeFileInfo:
    images = _zip_images(bundle, set_name)
    entries = [(path, functools.partial(bundle.open, member)) for path, member in images]
    labels, headers = _check_image_set(entries, set_name, max_images, max_total_pixels)
    for (path, member), header in zip(images, headers, strict=True):
        tail = _stream_tail(bundle, member)
        if header.format == "PNG" and tail != PNG_END:
            raise ProbeError(
                f"{set_name}: {shown_name(str(path))}: not a readable PNG or JPEG image (it does not end "
                "with PNG's IEND chunk: truncated, or with data appended)"
            )
    shapes = {(header.channels, header.height, header.width) for header in headers}
    channels = {header.channels for header in headers}
    return ProbeFileInfo(
        format="zip",
        images=len(headers),
        labelled=labels is not None,
        shape=next(iter(shapes)) if len(shapes) == 1 else None,
        channels=next(iter(channels)) if len(channels) == 1 else None,
    )


def _stream_tail(bundle: zipfile.ZipFile, member: zipfile.ZipInfo) -> bytes:
    """Read a member to its end in bounded chunks, so zipfile checks its CRC; its last 12 bytes."""
    tail = b""
    with bundle.open(member) as file:
        while chunk := file.read(READ_CHUNK):
            tail = (tail + chunk)[-len(PNG_END) :]
    return tail


# --- images ---------------------------------------------------------------------------------------------


def _read_image_folder(
    folder: Path,
    preprocessing: Preprocessing,
    expected_shape: tuple[int | None, ...] | None,
    max_images: int,
    max_total_pixels: int,
) -> tuple[np.ndarray, np.ndarray | None, list[str], str]:
    files = [PurePosixPath(p.relative_to(folder).as_posix()) for p in folder.rglob("*") if p.is_file()]
    paths = _image_paths(files, folder.name)
    entries = [(path, functools.partial((folder / path).open, "rb")) for path in paths]
    raw, labels = _read_images(
        entries, folder.name, preprocessing, expected_shape, max_images, max_total_pixels
    )
    digest = hashlib.sha256()
    for path in paths:
        digest.update(str(path).encode() + b"\0" + hashlib.sha256((folder / path).read_bytes()).digest())
    return raw, labels, [str(path) for path in paths], digest.hexdigest()


def _image_paths(paths: list[PurePosixPath], set_name: str) -> list[PurePosixPath]:
    """The PNG/JPEG files of a set, sorted; a file named as another image format is refused, not left out."""
    other = next((path for path in paths if path.suffix.lower() in OTHER_IMAGE_SUFFIXES), None)
    if other is not None:
        raise ProbeError(
            f"{set_name}: {shown_name(str(other))} is named as a {other.suffix[1:].upper()} image; only PNG "
            "and JPEG images are read. Convert it to PNG"
        )
    images = sorted(path for path in paths if path.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ProbeError(f"{set_name}: no .png/.jpg/.jpeg files found")
    twice = next((a for a, b in itertools.pairwise(images) if a == b), None)
    if twice is not None:
        raise ProbeError(f"{set_name}: two files are named {shown_name(str(twice))}")
    return images


def _read_images(
    entries: list[tuple[PurePosixPath, _ImageOpener]],
    set_name: str,
    preprocessing: Preprocessing,
    expected_shape: tuple[int | None, ...] | None,
    max_images: int,
    max_total_pixels: int,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode every image, once every header has passed the caps."""
    channels = preprocessing.channels or _expected(expected_shape, 1) or 3
    if channels not in (1, 3):
        raise ProbeError(
            f"{set_name}: images can be read with 1 (grey) or 3 (RGB) channels, not {channels}; declare "
            "channels 1 or 3, or give the probes as a .npy/.npz array with the channels the model expects"
        )
    labels, _ = _check_image_set(entries, set_name, max_images, max_total_pixels)
    size = preprocessing.size or (None, None)
    images = []
    for path, open_image in entries:
        with open_image() as file:
            images.append(_decode(file, set_name, str(path), channels, size))
    shapes = sorted({image.shape for image in images})
    if len(shapes) > 1:
        more = f" and {len(shapes) - 5} more" if len(shapes) > 5 else ""
        raise ProbeError(
            f"{set_name}: images differ in size {shapes[:5]}{more}; declare a size to resize them to"
        )
    return np.stack(images), labels


def _check_image_set(
    entries: list[tuple[PurePosixPath, _ImageOpener]], set_name: str, max_images: int, max_total_pixels: int
) -> tuple[np.ndarray | None, list[_ImageHeader]]:
    """The count, the folder labels, every header against the pixel cap and the set against its budget;
    decodes nothing."""
    _check_count(len(entries), set_name, max_images)
    labels = _folder_labels([path for path, _ in entries], set_name)
    headers = []
    for path, open_image in entries:
        with open_image() as file, _opened_image(file, set_name, str(path)) as image:
            channels = 1 if Image.getmodebase(image.mode) == "L" else 3  # palette images are colour
            headers.append(_ImageHeader(image.format or "", image.width, image.height, channels))
    pixels = sum(header.width * header.height for header in headers) * DECODED_CHANNELS
    _check_pixel_budget(pixels, set_name, max_total_pixels, f"width x height x {DECODED_CHANNELS} channels")
    return labels, headers


def _folder_labels(relative: list[PurePosixPath], set_name: str) -> np.ndarray | None:
    """Images in sub-folders named by integer class index are labelled by their folder."""
    parents = {p.parent for p in relative}
    if parents == {PurePosixPath(".")}:
        return None
    if any(len(p.parts) != 2 or not p.parts[0].isdigit() for p in relative):
        raise ProbeError(
            f"{set_name}: put images either all at the top level, or all in sub-folders named by integer "
            "class"
        )
    return np.array([int(p.parts[0]) for p in relative], dtype=np.int64)


def _expected(shape: tuple[int | None, ...] | None, axis: int) -> int | None:
    return shape[axis] if shape is not None and len(shape) == 4 else None


@contextmanager
def _opened_image(file: IO[bytes], set_name: str, name: str) -> Iterator[Image.Image]:
    """A PNG/JPEG opened lazily (header only) and held to the pixel cap before any pixel is decompressed;
    what PIL raises inside the block, decoding included, becomes a ProbeError naming the image.

    PIL's own guard (the process-wide ``Image.MAX_IMAGE_PIXELS``) is left as it is: it only raises above
    twice its cap, and changing it would change every other user of PIL in the process.
    """
    try:
        with Image.open(file, formats=IMAGE_FORMATS) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise ProbeError(_too_many_pixels(set_name, name, f"{image.width} x {image.height}"))
            yield image
    except ProbeError:
        raise
    except Image.DecompressionBombError as error:
        raise ProbeError(_too_many_pixels(set_name, name, str(error))) from None
    except _DECODER_ERRORS as error:
        # PIL's "cannot identify" message quotes the file object, which may hold a path
        reason = "not PNG or JPEG data" if isinstance(error, UnidentifiedImageError) else _reason(error)
        raise ProbeError(
            f"{set_name}: {shown_name(name)}: not a readable PNG or JPEG image ({reason})"
        ) from None


def _decode(
    file: IO[bytes], set_name: str, name: str, channels: int, size: tuple[int | None, int | None]
) -> np.ndarray:
    with _opened_image(file, set_name, name) as image:
        image.load()
        converted = image.convert("L" if channels == 1 else "RGB")
    height, width = size
    if height is not None and width is not None and converted.size != (width, height):
        converted = converted.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(converted)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _too_many_pixels(set_name: str, name: str, detail: str) -> str:
    return (
        f"{set_name}: {shown_name(name)}: image is too large ({detail}); at most {MAX_IMAGE_PIXELS} pixels "
        "are read (decompression-bomb guard). Downscale the image before auditing"
    )


# --- arrays ---------------------------------------------------------------------------------------------


def _read_array(path: Path, max_images: int, max_total_pixels: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Images and labels, each read only once its header has passed every check."""
    if not _magic(path).startswith(b"PK"):
        with path.open("rb") as file:
            return _load_image_array(file, path.stat().st_size, path.name, max_images, max_total_pixels), None
    with _probe_zip(path, max_images) as bundle:
        images, labels = _npz_members(bundle, path.name)
        with bundle.open(images) as file:
            x = _load_image_array(file, images.file_size, path.name, max_images, max_total_pixels)
        return x, None if labels is None else _read_labels(bundle, labels, len(x), path.name)


def _npz_members(bundle: zipfile.ZipFile, name: str) -> tuple[zipfile.ZipInfo, zipfile.ZipInfo | None]:
    """The members holding the images and the labels, chosen by key as for ``np.load``'s NpzFile."""
    arrays = {m.filename.removesuffix(".npy"): m for m in bundle.infolist() if m.filename.endswith(".npy")}
    keys = list(arrays)
    image_key = next((k for k in ("x", "images", "X") if k in arrays), keys[0] if len(keys) == 1 else None)
    if image_key is None:
        raise ProbeError(
            f"{name}: .npz holds {[shown_name(k) for k in keys[:10]]}; name the images 'x' (and labels 'y')"
        )
    label_key = next((k for k in ("y", "labels", "Y") if k in arrays), None)
    return arrays[image_key], None if label_key is None else arrays[label_key]


def _image_array_header(
    file: IO[bytes], stored_bytes: int, name: str, max_images: int, max_total_pixels: int
) -> tuple[int, ...]:
    """The shape of an image array, from its header; refuses what ``load_probes`` would, short of values."""
    shape, dtype = _array_header(file, stored_bytes, name)
    # kinds i/u/f only: refuses bool, complex, strings, bytes, records, datetimes and timedeltas (which
    # np.issubdtype counts as integers)
    if dtype.kind not in "iuf":
        raise ProbeError(
            f"{name}: images must be real integer or floating-point numbers, not {dtype}; "
            "convert the array (e.g. to uint8 or float32) and save it again"
        )
    if len(shape) not in (3, 4):
        raise ProbeError(
            f"{name}: probe array has shape {list(shape)}; expected [N, C, H, W], [N, H, W, C] or [N, H, W]"
        )
    _check_count(shape[0], name, max_images)
    _check_pixel_budget(math.prod(shape), name, max_total_pixels, "the product of the array's shape")
    _check_stored_bytes(file, stored_bytes, shape, dtype, name)
    return shape


def _load_image_array(
    file: IO[bytes], stored_bytes: int, name: str, max_images: int, max_total_pixels: int
) -> np.ndarray:
    _image_array_header(file, stored_bytes, name, max_images, max_total_pixels)
    file.seek(0)
    return _array_data(file, name)


def _read_labels(bundle: zipfile.ZipFile, member: zipfile.ZipInfo, count: int, name: str) -> np.ndarray:
    with bundle.open(member) as file:
        shape, dtype = _array_header(file, member.file_size, name)
        if shape != (count,):
            raise ProbeError(f"{name}: labels have shape {list(shape)}; expected [{count}]")
        if dtype.kind not in "iu":
            raise ProbeError(f"{name}: labels must be integer class indices, not {dtype}")
        _check_stored_bytes(file, member.file_size, shape, dtype, name)
        file.seek(0)
        labels = _array_data(file, name)
    if (labels < 0).any():
        raise ProbeError(f"{name}: labels must be non-negative class indices")
    return labels.astype(np.int64)


def _array_header(file: IO[bytes], stored_bytes: int, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a .npy header, refusing Python objects; reads no data."""
    try:
        version = np.lib.format.read_magic(file)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(file)
        elif version in (
            (2, 0),
            (3, 0),
        ):  # 3.0 differs only in UTF-8 field names, which structured dtypes use
            shape, _, dtype = np.lib.format.read_array_header_2_0(file)
        else:
            raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")
    except (ValueError, EOFError) as error:
        raise ProbeError(f"{name}: not a readable NumPy array file ({_reason(error)})") from None
    if dtype.hasobject:
        raise ProbeError(
            f"{name}: not a readable NumPy array file: it holds Python objects, which only unpickling could "
            "load (never done here). Save the images as numbers (e.g. uint8 or float32)"
        )
    return shape, dtype


def _check_stored_bytes(
    file: IO[bytes], stored_bytes: int, shape: tuple[int, ...], dtype: np.dtype, name: str
) -> None:
    """The bytes after the header (``file`` is just past it) hold what the header declares."""
    data_bytes = math.prod(shape) * dtype.itemsize
    if stored_bytes - file.tell() < data_bytes:
        raise ProbeError(
            f"{name}: not a readable NumPy array file: its header declares shape {list(shape)} of {dtype} "
            f"({data_bytes} bytes), but {stored_bytes - file.tell()} bytes follow it (truncated)"
        )


def _array_data(file: IO[bytes], name: str) -> np.ndarray:
    try:
        return np.lib.format.read_array(file, allow_pickle=False)
    except (ValueError, EOFError) as error:
        raise ProbeError(f"{name}: not a readable NumPy array file ({_reason(error)})") from None


def _array_info(format: str, shape: tuple[int, ...], labelled: bool) -> ProbeFileInfo:
    grey = len(shape) == 3  # [N, H, W]: one channel, added when loaded
    item = (1, *shape[1:]) if grey else shape[1:]
    return ProbeFileInfo(format, shape[0], labelled, item, 1 if grey else None)


def _to_nchw(x: np.ndarray, layout: Layout) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None, :, :]
    return x.transpose(0, 3, 1, 2) if layout is Layout.nhwc else x


# --- checks shared by images and arrays ----------------------------------------------------------------


def _check_count(count: int, name: str, max_images: int) -> None:
    if count > max_images:
        raise ProbeError(f"{name}: {count} probe images; at most {max_images} are allowed")


def _check_pixel_budget(pixels: int, name: str, budget: int, counted: str) -> None:
    if pixels > budget:
        raise ProbeError(
            f"{name}: the set holds {pixels} pixels ({counted}); one image set may hold at most {budget} "
            "(pixel budget, max_probe_set_pixels). Use fewer or smaller images"
        )


def _refuse_image_only_settings(name: str, preprocessing: Preprocessing) -> None:
    """Refuse size/channels for arrays: they say how to decode images, and arrays are taken as they are."""
    declared = [setting for setting in ("size", "channels") if getattr(preprocessing, setting) is not None]
    if declared:
        raise ProbeError(
            f"{name}: preprocessing {' and '.join(declared)} apply only to image folders; arrays are never "
            "resized or re-channelled. Prepare the array at the model's input size and channel count "
            f"beforehand and leave {' and '.join(declared)} out"
        )


def _check_channels_first(shape: tuple[int | None, ...], what: str, name: str) -> None:
    """Refuse a 4-D shape that looks channels-last: more than 4 "channels" and a "width" of at most 4.

    The engine reads [N, C, H, W]. Images have 1 (grey), 3 (RGB) or 4 (RGBA) channels, so an axis of at most
    4 in the width position next to more than 4 in the channel position is almost surely [N, H, W, C] read
    as channels-first (e.g. [N, 8, 8, 3] or [N, 28, 28, 1]). Dimensions not known (None) are not judged;
    3-D and other shapes are left to the other checks.
    """
    if len(shape) != 4:
        return
    channels, width = shape[1], shape[3]
    if channels is None or width is None:
        return
    if channels > MAX_CHANNELS_LAST_WIDTH and width <= MAX_CHANNELS_LAST_WIDTH:
        shown = "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"
        raise ProbeError(
            f"{name}: the engine needs [N, C, H, W] (channels-first) input, but the shape {shown} of {what} "
            "looks channels-last ([N, H, W, C]). Pass --layout NHWC (preprocessing layout) for .npy/.npz "
            "arrays, or export the model with a channels-first input"
        )


def _check_min_size(shape: tuple[int, ...], name: str) -> None:
    height, width = shape[2], shape[3]
    if height < MIN_SIDE or width < MIN_SIDE:
        raise ProbeError(
            f"{name}: probe images are {height} x {width} pixels; the similarity metrics need at least "
            f"{MIN_SIDE} x {MIN_SIDE}. Use larger images (or declare a larger size for image folders)"
        )


def _normalize(x: np.ndarray, preprocessing: Preprocessing, default_scale: float, name: str) -> np.ndarray:
    x = x / (preprocessing.value_scale or default_scale)
    channels = x.shape[1]
    for setting in ("mean", "std"):
        values = getattr(preprocessing, setting)
        if values is not None and len(values) not in (1, channels):
            raise ProbeError(
                f"{name}: preprocessing {setting} has {len(values)} values for {channels} channel(s); "
                f"give 1 value or {channels}"
            )
    if preprocessing.mean is not None:
        x = x - np.asarray(preprocessing.mean).reshape(1, -1, 1, 1)
    if preprocessing.std is not None:
        x = x / np.asarray(preprocessing.std).reshape(1, -1, 1, 1)
    return x


def _check_shape(x: np.ndarray, expected: tuple[int | None, ...] | None, name: str) -> None:
    if expected is None:
        return
    expected_text = "[" + ", ".join("N" if d is None else str(d) for d in expected) + "]"
    if x.ndim != len(expected) or any(
        e is not None and e != d for e, d in zip(expected[1:], x.shape[1:], strict=True)
    ):
        raise ProbeError(
            f"{name}: probes have shape {list(x.shape)} after preprocessing, but the model expects input of "
            f"shape {expected_text}; declare size/channels/layout to match"
        )


def _magic(path: Path) -> bytes:
    with path.open("rb") as file:
        return file.read(6)


def _file_sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _reason(error: BaseException) -> str:
    """The first line of a library's error, cut short: it may quote the uploader's bytes at length."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= 160 else text[:157] + "..."
