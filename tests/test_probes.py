"""Probe files become the model's input, or a clear error naming what does not fit."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workers.engine.errors import ProbeError
from workers.engine.probes import load_probes
from workers.engine.settings import Preprocessing

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
