"""Probe images: a folder (or zip) of PNG/JPEG files or a .npy/.npz array, turned into the model's input.

Images are decoded only as PNG or JPEG (exotic decoders), and an image whose header declares more than
``MAX_IMAGE_PIXELS`` pixels is refused before its pixels are decoded (decompression bombs). Arrays are read
with ``allow_pickle=False`` and must hold real integer or floating-point values. Images are decoded with the
channel count the model expects (or the one declared) but never resized unless a size is declared; arrays
are never resized or re-channelled. A mismatch with the model's input is an error that names both shapes.
The engine works on channels-first input [N, C, H, W], at least 3 x 3 pixels (the similarity metrics need
a 3 x 3 window).
"""

import dataclasses
import hashlib
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from workers.engine.errors import ProbeError
from workers.engine.settings import Layout, Preprocessing

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
IMAGE_FORMATS = ("PNG", "JPEG")
MAX_IMAGE_PIXELS = 4096 * 4096
MIN_IMAGES = 2
MAX_TRAINING_IMAGES = 200_000
MIN_SIDE = 3  # SSIM and the other windowed similarity metrics need at least 3 x 3 pixels
MAX_ZIP_BYTES = 4 * 1024**3  # what a zip of images may unpack to (zip bombs)
MAX_CHANNELS_LAST_WIDTH = 4  # a "width" this small next to more channels than that is a channels-last axis


@dataclass(frozen=True)
class ProbeSet:
    x: np.ndarray  # float32 [N, C, H, W], preprocessed
    labels: np.ndarray | None  # int64 [N]
    names: list[str]
    source: str
    sha256: str


def load_probes(
    path: Path, preprocessing: Preprocessing, expected_shape: tuple[int | None, ...] | None, max_images: int
) -> ProbeSet:
    """Read and preprocess probes; ``expected_shape`` is the model's input shape (None = dynamic)."""
    if path.suffix.lower() == ".zip":
        with tempfile.TemporaryDirectory() as folder:
            extract_image_zip(path, Path(folder))
            unpacked = load_probes(Path(folder), preprocessing, expected_shape, max_images)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return dataclasses.replace(unpacked, source=path.name, sha256=digest)
    if expected_shape is not None:
        _check_channels_first(expected_shape, "the model's input", path)
    if path.is_dir():
        raw, labels, names, digest = _read_image_folder(path, preprocessing, expected_shape)
        default_scale = 255.0
    elif path.suffix.lower() in {".npy", ".npz"}:
        _refuse_image_only_settings(path, preprocessing)
        raw, labels, digest = _read_array(path)
        raw = _to_nchw(raw, preprocessing.layout, path)
        names = [f"{path.name}[{i}]" for i in range(len(raw))]
        default_scale = 1.0 if np.issubdtype(raw.dtype, np.floating) else 255.0
    else:
        raise ProbeError(f"{path}: probes must be a folder or zip of PNG/JPEG images, or a .npy/.npz array")
    if len(raw) < MIN_IMAGES:
        raise ProbeError(f"{path}: {len(raw)} probe image(s); at least {MIN_IMAGES} are needed")
    if len(raw) > max_images:
        raise ProbeError(f"{path}: {len(raw)} probe images; at most {max_images} are allowed (max_images)")
    # preprocessing below only rescales values: raw already has the final shape
    _check_channels_first(raw.shape, "the probes", path)
    _check_min_size(raw.shape, path)
    x = _normalize(raw.astype(np.float64), preprocessing, default_scale, path).astype(np.float32)
    if not np.isfinite(x).all():
        raise ProbeError(f"{path}: probes contain NaN or infinite values")
    _check_shape(x, expected_shape, path)
    return ProbeSet(x=x, labels=labels, names=names, source=path.name, sha256=digest)


@dataclass(frozen=True)
class ProbeFileInfo:
    format: str  # "npy", "npz" or "zip" (of PNG/JPEG images)
    images: int
    labelled: bool


def inspect_probe_file(path: Path, max_images: int) -> ProbeFileInfo:
    """Check an uploaded image set whatever its name: readable, real numbers, every image decodable.

    Cheaper than ``load_probes`` and independent of preprocessing (not yet known at upload): arrays are
    not reshaped and images not resized, so a set of mixed sizes passes here and meets its size later.
    """
    with path.open("rb") as file:
        magic = file.read(6)
    if magic.startswith(b"\x93NUMPY") or (magic.startswith(b"PK") and _holds_only_arrays(path)):
        x, labels, _ = _read_array(path)
        if x.ndim not in (3, 4):
            raise ProbeError(f"{path.name}: images have shape {list(x.shape)}; expected 3 or 4 axes")
        info = ProbeFileInfo("npy" if magic.startswith(b"\x93NUMPY") else "npz", len(x), labels is not None)
    elif magic.startswith(b"PK"):
        with tempfile.TemporaryDirectory() as folder:
            extract_image_zip(path, Path(folder))
            files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
            if not files:
                raise ProbeError(f"{path.name}: the zip holds no .png/.jpg/.jpeg files")
            labels = _folder_labels([f.relative_to(folder) for f in files], path)
            if len(files) <= max_images:
                for file in files:
                    _decode(file, 1, (None, None))
        info = ProbeFileInfo("zip", len(files), labels is not None)
    else:
        raise ProbeError(f"{path.name}: not a .npy/.npz array or a zip of PNG/JPEG images")
    if info.images > max_images:
        raise ProbeError(f"{path.name}: {info.images} images; at most {max_images} are allowed")
    return info


def _holds_only_arrays(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as bundle:
            names = bundle.namelist()
    except zipfile.BadZipFile:
        return False
    return bool(names) and all(name.endswith(".npy") for name in names)


def extract_image_zip(archive: Path, folder: Path) -> None:
    """Unpack only image files, only inside ``folder``, within a size cap (zip slip, zip bombs)."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = [m for m in bundle.infolist() if not m.is_dir()]
            if sum(m.file_size for m in members) > MAX_ZIP_BYTES:
                raise ProbeError(f"{archive}: unpacks to more than {MAX_ZIP_BYTES} bytes")
            for member in members:
                name = PurePosixPath(member.filename)
                if name.is_absolute() or ".." in name.parts or "\\" in member.filename:
                    raise ProbeError(f"{archive}: member {member.filename!r} points outside the archive")
                if name.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                target = folder.joinpath(*name.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(bundle.read(member))
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError) as error:
        raise ProbeError(f"{archive}: not a readable zip archive ({error})") from None


def check_label_range(labels: np.ndarray, classes: int, source: str) -> None:
    """Labels must name classes the model has."""
    if labels.max() >= classes:
        raise ProbeError(f"{source}: labels go up to {labels.max()}, but the model has {classes} classes")


def _refuse_image_only_settings(path: Path, preprocessing: Preprocessing) -> None:
    """Refuse size/channels for arrays: they say how to decode images, and arrays are taken as they are."""
    declared = [name for name in ("size", "channels") if getattr(preprocessing, name) is not None]
    if declared:
        raise ProbeError(
            f"{path}: preprocessing {' and '.join(declared)} apply only to image folders; arrays are never "
            "resized or re-channelled. Prepare the array at the model's input size and channel count "
            f"beforehand and leave {' and '.join(declared)} out"
        )


def _check_channels_first(shape: tuple[int | None, ...], what: str, path: Path) -> None:
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
            f"{path}: the engine needs [N, C, H, W] (channels-first) input, but the shape {shown} of {what} "
            "looks channels-last ([N, H, W, C]). Pass --layout NHWC (preprocessing layout) for .npy/.npz "
            "arrays, or export the model with a channels-first input"
        )


def _check_min_size(shape: tuple[int, ...], path: Path) -> None:
    height, width = shape[2], shape[3]
    if height < MIN_SIDE or width < MIN_SIDE:
        raise ProbeError(
            f"{path}: probe images are {height} x {width} pixels; the similarity metrics need at least "
            f"{MIN_SIDE} x {MIN_SIDE}. Use larger images (or declare a larger size for image folders)"
        )


def _read_array(path: Path) -> tuple[np.ndarray, np.ndarray | None, str]:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as bundle:  # a compressed .npz can unpack to far more than it weighs
            if sum(member.file_size for member in bundle.infolist()) > MAX_ZIP_BYTES:
                raise ProbeError(f"{path}: unpacks to more than {MAX_ZIP_BYTES} bytes")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            x, labels = loaded, None
        else:
            x, labels = _read_npz(loaded, path)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError, RuntimeError) as error:
        # object arrays (pickles), damaged or encrypted members, unsupported compression
        raise ProbeError(f"{path}: not a readable NumPy array file ({error})") from None
    # kinds i/u/f only: refuses bool, complex, strings, bytes, records, datetimes and timedeltas (which
    # np.issubdtype counts as integers)
    if x.dtype.kind not in "iuf":
        raise ProbeError(
            f"{path}: images must be real integer or floating-point numbers, not {x.dtype}; "
            "convert the array (e.g. to uint8 or float32) and save it again"
        )
    return x, labels, digest


def _read_npz(loaded: np.lib.npyio.NpzFile, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    with loaded:
        keys = list(loaded.keys())
        image_key = next((k for k in ("x", "images", "X") if k in keys), keys[0] if len(keys) == 1 else None)
        if image_key is None:
            raise ProbeError(f"{path}: .npz holds {keys}; name the images 'x' (and labels 'y')")
        label_key = next((k for k in ("y", "labels", "Y") if k in keys), None)
        x = loaded[image_key]
        if x.ndim == 0:
            raise ProbeError(f"{path}: '{image_key}' is a single number; save the images as an array")
        labels = _check_labels(loaded[label_key], len(x), path) if label_key else None
    return x, labels


def _check_labels(labels: np.ndarray, count: int, path: Path) -> np.ndarray:
    if labels.ndim != 1 or len(labels) != count:
        raise ProbeError(f"{path}: labels have shape {list(labels.shape)}; expected [{count}]")
    if labels.dtype.kind not in "iu":
        raise ProbeError(f"{path}: labels must be integer class indices, not {labels.dtype}")
    if (labels < 0).any():
        raise ProbeError(f"{path}: labels must be non-negative class indices")
    return labels.astype(np.int64)


def _to_nchw(x: np.ndarray, layout: Layout, path: Path) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None, :, :]
    if x.ndim != 4:
        raise ProbeError(
            f"{path}: probe array has shape {list(x.shape)}; expected [N, C, H, W], [N, H, W, C] or [N, H, W]"
        )
    return x.transpose(0, 3, 1, 2) if layout is Layout.nhwc else x


def _read_image_folder(
    folder: Path, preprocessing: Preprocessing, expected_shape: tuple[int | None, ...] | None
) -> tuple[np.ndarray, np.ndarray | None, list[str], str]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ProbeError(f"{folder}: no .png/.jpg/.jpeg files found")
    relative = [p.relative_to(folder) for p in files]
    labels = _folder_labels(relative, folder)
    channels = preprocessing.channels or _expected(expected_shape, 1) or 3
    if channels not in (1, 3):
        raise ProbeError(
            f"{folder}: images can be read with 1 (grey) or 3 (RGB) channels, not {channels}; declare "
            "channels 1 or 3, or give the probes as a .npy/.npz array with the channels the model expects"
        )
    size = preprocessing.size or (None, None)
    digest = hashlib.sha256()
    images = []
    for file, name in zip(files, relative, strict=True):
        data = file.read_bytes()
        digest.update(str(name).encode() + b"\0" + hashlib.sha256(data).digest())
        images.append(_decode(file, channels, size))
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise ProbeError(
            f"{folder}: images differ in size {sorted(shapes)}; declare a size to resize them to"
        )
    return np.stack(images), labels, [str(name) for name in relative], digest.hexdigest()


def _folder_labels(relative: list[Path], folder: Path) -> np.ndarray | None:
    """Images in sub-folders named by integer class index are labelled by their folder."""
    parents = {p.parent for p in relative}
    if parents == {Path(".")}:
        return None
    if any(len(p.parts) != 2 or not p.parts[0].isdigit() for p in relative):
        raise ProbeError(
            f"{folder}: put images either all at the top level, or all in sub-folders named by integer class"
        )
    return np.array([int(p.parts[0]) for p in relative], dtype=np.int64)


def _expected(shape: tuple[int | None, ...] | None, axis: int) -> int | None:
    return shape[axis] if shape is not None and len(shape) == 4 else None


def _decode(file: Path, channels: int, size: tuple[int | None, int | None]) -> np.ndarray:
    """Decode one PNG/JPEG; the pixel cap is checked on the header, before any pixel is decompressed.

    PIL's own guard (the process-wide ``Image.MAX_IMAGE_PIXELS``) is left as it is: it only raises above
    twice its cap, and changing it would change every other user of PIL in the process.
    """
    try:
        with Image.open(file, formats=IMAGE_FORMATS) as image:  # lazy: reads the header only
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise ProbeError(_too_many_pixels(file, f"{image.width} x {image.height}"))
            image.load()
            converted = image.convert("L" if channels == 1 else "RGB")
    except Image.DecompressionBombError as error:
        raise ProbeError(_too_many_pixels(file, str(error))) from None
    except (UnidentifiedImageError, OSError) as error:
        raise ProbeError(f"{file}: not a readable PNG or JPEG image ({error})") from None
    height, width = size
    if height is not None and width is not None and converted.size != (width, height):
        converted = converted.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(converted)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _too_many_pixels(file: Path, detail: str) -> str:
    return (
        f"{file}: image is too large ({detail}); at most {MAX_IMAGE_PIXELS} pixels are read "
        "(decompression-bomb guard). Downscale the image before auditing"
    )


def _normalize(x: np.ndarray, preprocessing: Preprocessing, default_scale: float, path: Path) -> np.ndarray:
    x = x / (preprocessing.value_scale or default_scale)
    channels = x.shape[1]
    for name in ("mean", "std"):
        values = getattr(preprocessing, name)
        if values is not None and len(values) not in (1, channels):
            raise ProbeError(
                f"{path}: preprocessing {name} has {len(values)} values for {channels} channel(s); "
                f"give 1 value or {channels}"
            )
    if preprocessing.mean is not None:
        x = x - np.asarray(preprocessing.mean).reshape(1, -1, 1, 1)
    if preprocessing.std is not None:
        x = x / np.asarray(preprocessing.std).reshape(1, -1, 1, 1)
    return x


def _check_shape(x: np.ndarray, expected: tuple[int | None, ...] | None, path: Path) -> None:
    if expected is None:
        return
    expected_text = "[" + ", ".join("N" if d is None else str(d) for d in expected) + "]"
    if x.ndim != len(expected) or any(
        e is not None and e != d for e, d in zip(expected[1:], x.shape[1:], strict=True)
    ):
        raise ProbeError(
            f"{path}: probes have shape {list(x.shape)} after preprocessing, but the model expects input of "
            f"shape {expected_text}; declare size/channels/layout to match"
        )
