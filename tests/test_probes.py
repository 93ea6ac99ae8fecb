"""Probe files become the model's input, or a clear error naming what does not fit."""

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workers.core import probes as probes_module
from workers.core.audit_settings import Preprocessing
from workers.core.errors import ProbeError
from workers.core.probes import MAX_IMAGE_PIXELS, load_probes

MODEL_SHAPE = (None, 1, 8, 8)


def _write_png(
    path: Path, value: int | tuple[int, int, int], size: tuple[int, int] = (8, 8), mode: str = "L"
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)


def test_folder_of_class_subfolders_gives_labels_and_scaled_values(tmp_path: Path) -> None:
    _write_png(tmp_path / "3" / "a.png", 255)
    _write_png(tmp_path / "7" / "b.png", 51)
    probes = load_probes(tmp_path, Preprocessing(), MODEL_SHAPE, max_images=10)
    assert probes.x.shape == (2, 1, 8, 8) and probes.x.dtype == np.float32
    assert probes.x[0].max() == 1.0 and np.isclose(probes.x[1].max(), 0.2)
    assert probes.labels.tolist() == [3, 7]
    assert probes.names == ["3/a.png", "7/b.png"]


def test_rgb_images_are_resized_and_normalized_when_declared(tmp_path: Path) -> None:
    for index in range(3):
        _write_png(tmp_path / f"{index}.jpg", (128, 128, 128), size=(20, 10), mode="RGB")
    preprocessing = Preprocessing(size=(8, 8), mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    probes = load_probes(tmp_path, preprocessing, (None, 3, 8, 8), max_images=10)
    assert probes.x.shape == (3, 3, 8, 8)
    assert probes.labels is None
    assert np.allclose(probes.x, (128 / 255 - 0.5) / 0.25, atol=0.02)


def test_image_size_mismatch_names_both_shapes(tmp_path: Path) -> None:
    for index in range(2):
        _write_png(tmp_path / f"{index}.png", 10, size=(12, 12))
    with pytest.raises(ProbeError, match=r"shape \[2, 1, 12, 12\].*expects input of shape \[N, 1, 8, 8\]"):
        load_probes(tmp_path, Preprocessing(), MODEL_SHAPE, max_images=10)


def test_nhwc_npz_with_labels_and_integer_pixels(tmp_path: Path) -> None:
    x = np.full((4, 8, 8, 1), 255, dtype=np.uint8)
    np.savez(tmp_path / "p.npz", x=x, y=np.arange(4))
    probes = load_probes(tmp_path / "p.npz", Preprocessing(layout="NHWC"), MODEL_SHAPE, max_images=10)
    assert probes.x.shape == (4, 1, 8, 8) and probes.x.max() == 1.0
    assert probes.labels.tolist() == [0, 1, 2, 3]


def test_float_arrays_are_taken_as_they_are(tmp_path: Path) -> None:
    x = np.linspace(-2, 2, 3 * 64, dtype=np.float32).reshape(3, 8, 8)
    np.save(tmp_path / "p.npy", x)
    probes = load_probes(tmp_path / "p.npy", Preprocessing(), MODEL_SHAPE, max_images=10)
    assert np.array_equal(probes.x[:, 0], x)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (np.array([{"a": 1}, {"b": 2}], dtype=object), "not a readable NumPy array"),
        (np.zeros((1, 1, 8, 8), dtype=np.float32), "at least 2 are needed"),
        (np.full((3, 1, 8, 8), np.nan, dtype=np.float32), "NaN or infinite"),
        (np.zeros((3, 8), dtype=np.float32), r"expected \[N, C, H, W\]"),
        (np.zeros((), dtype=np.float32), r"expected \[N, C, H, W\]"),
        (np.zeros((3, 1, 8, 8), dtype=bool), "real integer or floating-point numbers, not bool"),
        (np.zeros((3, 1, 8, 8), dtype=np.complex64), "not complex64"),
        (np.full((3, 1, 8, 8), "a"), "not <U1"),
        (np.zeros((3, 1, 8, 8), dtype="S1"), "not |S1"),
        (np.zeros((3, 1, 8, 8), dtype="m8[s]"), r"not timedelta64\[s\]"),  # np.issubdtype says integer
        (np.zeros(3, dtype=[("a", np.float32)]), "real integer or floating-point"),
    ],
)
def test_bad_arrays_are_refused(tmp_path: Path, content: np.ndarray, message: str) -> None:
    np.save(tmp_path / "p.npy", content, allow_pickle=True)
    with pytest.raises(ProbeError, match=message):
        load_probes(tmp_path / "p.npy", Preprocessing(), MODEL_SHAPE, max_images=10)


def test_labels_must_match_the_images(tmp_path: Path) -> None:
    np.savez(tmp_path / "p.npz", x=np.zeros((3, 1, 8, 8), np.float32), y=np.array([0, 1]))
    with pytest.raises(ProbeError, match=r"labels have shape \[2\]; expected \[3\]"):
        load_probes(tmp_path / "p.npz", Preprocessing(), MODEL_SHAPE, max_images=10)


def test_corrupt_and_disguised_images_are_refused(tmp_path: Path) -> None:
    _write_png(tmp_path / "good.png", 0)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ProbeError, match=r"bad\.png: not a readable PNG or JPEG"):
        load_probes(tmp_path, Preprocessing(), MODEL_SHAPE, max_images=10)
    (tmp_path / "bad.png").unlink()
    Image.new("L", (8, 8)).save(tmp_path / "gif.png", format="GIF")
    with pytest.raises(ProbeError, match=r"gif\.png: not a readable PNG or JPEG"):
        load_probes(tmp_path, Preprocessing(), MODEL_SHAPE, max_images=10)


def test_too_many_images_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "p.npy", np.zeros((5, 1, 8, 8), np.float32))
    with pytest.raises(ProbeError, match="at most 4"):
        load_probes(tmp_path / "p.npy", Preprocessing(), MODEL_SHAPE, max_images=4)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.float16, np.float64])
def test_real_integer_and_float_arrays_are_accepted(tmp_path: Path, dtype: type) -> None:
    np.save(tmp_path / "p.npy", np.ones((2, 1, 8, 8), dtype=dtype))
    probes = load_probes(tmp_path / "p.npy", Preprocessing(), MODEL_SHAPE, max_images=10)
    assert probes.x.dtype == np.float32 and probes.x.shape == (2, 1, 8, 8)


def test_npz_images_of_a_non_numeric_dtype_are_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "p.npz", x=np.ones((3, 1, 8, 8), dtype=bool), y=np.arange(3))
    with pytest.raises(ProbeError, match=r"p\.npz: images must be real integer or floating-point.*convert"):
        load_probes(tmp_path / "p.npz", Preprocessing(), MODEL_SHAPE, max_images=10)


@pytest.mark.parametrize("shape", [(3, 1, 2, 8), (3, 1, 8, 2), (3, 2, 2), (3, 1, 1, 1)])
def test_arrays_smaller_than_3x3_are_refused(tmp_path: Path, shape: tuple[int, ...]) -> None:
    np.save(tmp_path / "p.npy", np.zeros(shape, np.float32))
    with pytest.raises(ProbeError, match=r"p\.npy: probe images are \d x \d pixels.*at least 3 x 3"):
        load_probes(tmp_path / "p.npy", Preprocessing(), None, max_images=10)


def test_3x3_arrays_are_the_smallest_accepted(tmp_path: Path) -> None:
    np.save(tmp_path / "p.npy", np.zeros((2, 1, 3, 3), np.float32))
    assert load_probes(tmp_path / "p.npy", Preprocessing(), None, max_images=10).x.shape == (2, 1, 3, 3)


def test_images_smaller_than_3x3_are_refused_as_read_or_as_resized(tmp_path: Path) -> None:
    for index in range(2):
        _write_png(tmp_path / "small" / f"{index}.png", 10, size=(8, 2))
        _write_png(tmp_path / "large" / f"{index}.png", 10, size=(8, 8))
    with pytest.raises(ProbeError, match=r"small: probe images are 2 x 8 pixels; .* at least 3 x 3"):
        load_probes(tmp_path / "small", Preprocessing(), None, max_images=10)
    with pytest.raises(ProbeError, match=r"large: probe images are 2 x 2 pixels"):
        load_probes(tmp_path / "large", Preprocessing(size=(2, 2)), None, max_images=10)


@pytest.mark.parametrize("shape", [(3, 8, 8, 3), (3, 28, 28, 1), (3, 5, 5, 4)])
def test_channels_last_arrays_read_as_nchw_are_refused(tmp_path: Path, shape: tuple[int, ...]) -> None:
    np.save(tmp_path / "p.npy", np.zeros(shape, np.float32))
    shown = r"\[" + ", ".join(map(str, shape)) + r"\]"
    with pytest.raises(
        ProbeError,
        match=rf"p\.npy: the engine needs \[N, C, H, W\].*shape {shown} of the probes looks channels-last"
        r".*--layout NHWC.*export the model with a channels-first input",
    ):
        load_probes(tmp_path / "p.npy", Preprocessing(), None, max_images=10)
    probes = load_probes(tmp_path / "p.npy", Preprocessing(layout="NHWC"), None, max_images=10)
    assert probes.x.shape == (shape[0], shape[3], shape[1], shape[2])


@pytest.mark.parametrize("shape", [(3, 5, 8, 8), (3, 4, 8, 3), (3, 3, 8, 4), (3, 8, 3, 8)])
def test_channels_first_heuristic_leaves_plausible_nchw_alone(tmp_path: Path, shape: tuple[int, ...]) -> None:
    np.save(tmp_path / "p.npy", np.zeros(shape, np.float32))
    assert load_probes(tmp_path / "p.npy", Preprocessing(), None, max_images=10).x.shape == shape


def test_a_channels_last_model_input_is_refused_before_decoding_images(tmp_path: Path) -> None:
    for index in range(2):
        _write_png(tmp_path / f"{index}.png", 10)
    with pytest.raises(
        ProbeError,
        match=r"shape \[N, 8, 8, 3\] of the model's input looks channels-last.*channels-first input",
    ):
        load_probes(tmp_path, Preprocessing(), (None, 8, 8, 3), max_images=10)


@pytest.mark.parametrize(
    ("preprocessing", "named"),
    [
        (Preprocessing(size=(8, 8)), "size"),
        (Preprocessing(channels=1), "channels"),
        (Preprocessing(size=(8, 8), channels=1), "size and channels"),
    ],
)
@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_size_and_channels_are_refused_for_arrays(
    tmp_path: Path, preprocessing: Preprocessing, named: str, suffix: str
) -> None:
    path = tmp_path / f"p{suffix}"
    x = np.zeros((3, 1, 8, 8), np.float32)  # already the model's shape: still refused, not silently ignored
    np.save(path, x) if suffix == ".npy" else np.savez(path, x=x)
    with pytest.raises(
        ProbeError,
        match=rf"p\{suffix}: preprocessing {named} apply only to image folders; arrays are never resized or "
        r"re-channelled\. Prepare the array",
    ):
        load_probes(path, preprocessing, MODEL_SHAPE, max_images=10)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header declares width x height grey pixels but whose pixel data is missing."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")))


def test_decompression_bombs_are_refused_from_the_header_before_decoding(tmp_path: Path) -> None:
    _write_png(tmp_path / "a.png", 0)
    # 25 M pixels: above the engine's cap, below twice it (where PIL's own guard would start to raise)
    _png_header_only(tmp_path / "bomb.png", 5000, 5000)
    assert MAX_IMAGE_PIXELS < 5000 * 5000 < 2 * MAX_IMAGE_PIXELS
    pil_cap = Image.MAX_IMAGE_PIXELS
    # refused as too large, not as unreadable: the missing pixel data was never decoded
    with pytest.raises(ProbeError, match=r"bomb\.png: image is too large \(5000 x 5000\); at most 16777216"):
        load_probes(tmp_path, Preprocessing(), MODEL_SHAPE, max_images=10)
    assert pil_cap == Image.MAX_IMAGE_PIXELS  # the process-wide PIL setting is left alone


def test_the_pixel_cap_is_inclusive_and_checked_on_every_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for index in range(2):
        _write_png(tmp_path / f"{index}.png", 10)
    monkeypatch.setattr(probes_module, "MAX_IMAGE_PIXELS", 64)
    assert load_probes(tmp_path, Preprocessing(), MODEL_SHAPE, max_images=10).x.shape == (2, 1, 8, 8)
    monkeypatch.setattr(probes_module, "MAX_IMAGE_PIXELS", 63)
    with pytest.raises(ProbeError, match=r"0\.png: image is too large \(8 x 8\); at most 63 pixels"):
        load_probes(tmp_path, Preprocessing(), MODEL_SHAPE, max_images=10)
