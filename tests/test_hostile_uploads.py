"""Hostile uploads get a clean 4xx problem that names what is wrong and no server path, leave nothing
behind, and never make the API process decode an image; the worker's full decode refuses them as cleanly.

``UPLOAD_CASES`` is the corpus: one record per hostile file, reusable by other tests.
"""

import hashlib
import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests import hostile_files as hostile
from tests.test_api import OCTET, make_client
from workers.core import probes as probes_module
from workers.core.audit_settings import Preprocessing
from workers.core.errors import ProbeError, UnsafeArtifactError
from workers.core.formats import sniff_format
from workers.core.probes import ProbeFileInfo, inspect_probe_file, load_probes
from workers.engine.artifacts import load_model

PROBES, TRAINING, MODELS = "/v1/probe-sets", "/v1/training-sets", "/v1/models"
PIXEL_BUDGET = 10_000_000  # the test server's max_probe_set_pixels: 200 black 4096 x 4096 PNGs exceed it
UPLOAD_LIMIT = 16 * hostile.MIB


@dataclass(frozen=True)
class UploadCase:
    kind: str  # "probe image" (inside a zip of good ones), "zip", "array", "model" or "request"
    name: str
    route: str
    body: Callable[[], bytes]
    status: int
    detail: str  # a fragment of the problem's detail


def _case(
    kind: str, name: str, body: Callable[[], bytes], detail: str, route: str = PROBES, status: int = 422
) -> UploadCase:
    return UploadCase(kind, name, route, body, status, detail)


def _in_zip(name: str, image: Callable[[], bytes]) -> Callable[[], bytes]:
    return lambda: hostile.zip_with(name, image())


UNREADABLE_IMAGE = "not a readable PNG or JPEG image"
OTHER_FORMAT = "only PNG and JPEG images are read"
OUTSIDE = "points outside the archive"
ZIP_BOMB = "zip bomb guard"
EXTERNAL = "keeps weights in external data files"

UPLOAD_CASES = [
    _case(
        "probe image",
        "PNG with a 200 MB zTXt chunk",
        _in_zip("002.png", hostile.png_ztxt_bomb),
        UNREADABLE_IMAGE,
    ),
    _case(
        "probe image",
        "PNG with a 200 MB iTXt chunk",
        _in_zip("002.png", hostile.png_itxt_bomb),
        UNREADABLE_IMAGE,
    ),
    _case(
        "probe image",
        "PNG declaring 50000 x 50000",
        _in_zip("002.png", hostile.png_dimension_bomb),
        "image is too large",
    ),
    _case(
        "probe image",
        "PNG declaring 5000 x 5000 (below PIL's own guard)",
        _in_zip("002.png", partial(hostile.png_dimension_bomb, 5000)),
        "too large (5000 x 5000)",
    ),
    _case(
        "probe image",
        "PNG cut in its header",
        _in_zip("002.png", hostile.png_cut_in_header),
        UNREADABLE_IMAGE,
    ),
    _case("probe image", "PNG cut in its pixels", _in_zip("002.png", hostile.png_cut_in_pixels), "IEND"),
    _case("probe image", "GIF", _in_zip("002.gif", hostile.gif_bytes), OTHER_FORMAT),
    _case("probe image", "GIF named .png", _in_zip("002.png", hostile.gif_bytes), UNREADABLE_IMAGE),
    _case("probe image", "BMP", _in_zip("002.bmp", hostile.bmp_bytes), OTHER_FORMAT),
    _case("probe image", "BMP named .jpg", _in_zip("002.jpg", hostile.bmp_bytes), UNREADABLE_IMAGE),
    _case("probe image", "WebP", _in_zip("002.webp", hostile.webp_bytes), OTHER_FORMAT),
    _case("probe image", "TIFF named .png", _in_zip("002.png", hostile.tiff_bytes), UNREADABLE_IMAGE),
    _case("probe image", "a bare PNG, not in a zip", hostile.good_png, "not a .npy/.npz array or a zip"),
    _case("zip", "zip slip (../../evil.png)", hostile.zip_slip, OUTSIDE),
    _case("zip", "zip slip in a training set", hostile.zip_slip, OUTSIDE, route=TRAINING),
    _case("zip", "absolute member name", hostile.zip_absolute_member, OUTSIDE),
    _case("zip", "backslash member name", hostile.zip_backslash_member, OUTSIDE),
    _case("zip", "symbolic link member", hostile.zip_symlink_member, OUTSIDE),
    _case("zip", "member of 2 GiB of zeros", hostile.zip_bomb, ZIP_BOMB),
    _case("zip", "member lying about its size", hostile.zip_lying_about_size, UNREADABLE_IMAGE),
    _case("zip", "bzip2 members", hostile.zip_bzip2_member, "other than stored or deflate"),
    _case("zip", "encrypted members", hostile.zip_encrypted_member, "not a readable zip archive"),
    _case(
        "zip", "name flagged UTF-8 that is not", hostile.zip_undecodable_name, "not a readable zip archive"
    ),
    _case("zip", "2500 entries", hostile.zip_many_entries, "entries; at most 2000"),
    _case("zip", "600 KB central directory", hostile.zip_long_names, "directory takes"),
    _case("zip", "two members of one name", hostile.zip_duplicate_names, "two files are named"),
    _case(
        "zip",
        "an image and a folder of one name",
        hostile.zip_file_and_folder_of_one_name,
        "sub-folders named",
    ),
    _case("zip", "200 black 4096 x 4096 PNGs", hostile.zip_of_black_pngs, "pixel budget"),
    _case("zip", "empty zip", hostile.empty_zip, "no .png/.jpg/.jpeg files"),
    _case("zip", "truncated zip", hostile.truncated_zip, "not a readable zip archive"),
    _case("array", "npz of an object array (pickle)", hostile.npz_object_array, "Python objects"),
    _case("array", "npy of an object array (pickle)", hostile.npy_object_array, "Python objects"),
    _case("array", "npy declaring 13 MB over 1 KB", hostile.npy_truncated, "(truncated)"),
    _case("array", "npy declaring 2**40 images", hostile.npy_huge_count, "probe images; at most 1000"),
    _case("array", "npy over the pixel budget", hostile.npy_over_budget, "pixel budget"),
    _case("array", "npy of complex numbers", hostile.npy_complex, "real integer or floating-point"),
    _case("array", "npy of strings", hostile.npy_strings, "real integer or floating-point"),
    _case("array", "npy of two axes", hostile.npy_wrong_axes, "expected [N, C, H, W]"),
    _case("array", "npy with code in its header", hostile.npy_bad_header, "not a readable NumPy array"),
    _case(
        "array",
        "npz with 2 labels for 3 images",
        hostile.npz_mismatched_labels,
        "labels have shape [2]; expected [3]",
    ),
    _case("array", "npz with float labels", hostile.npz_float_labels, "integer class indices"),
    _case("array", "npz with negative labels", hostile.npz_negative_labels, "non-negative", route=TRAINING),
    _case("array", "npz with object labels", hostile.npz_object_labels, "Python objects"),
    _case("array", "npz member of 2 GiB of zeros", hostile.npz_bomb, ZIP_BOMB),
    _case("array", "npz member failing its CRC", hostile.npz_damaged, "Bad CRC-32"),
    _case("array", "npz without an 'x'", hostile.npz_unnamed_arrays, "name the images 'x'"),
    _case("model", "truncated ONNX", hostile.onnx_truncated, "truncated or corrupt", route=MODELS),
    _case(
        "model", "garbage bytes", hostile.garbage, "not an ONNX, TorchScript or torch.export", route=MODELS
    ),
    _case(
        "model",
        "ONNX with external data at ../../etc/passwd",
        partial(hostile.onnx_model, "../../etc/passwd"),
        EXTERNAL,
        route=MODELS,
    ),
    _case(
        "model",
        "ONNX with external data at /etc/passwd",
        partial(hostile.onnx_model, "/etc/passwd"),
        EXTERNAL,
        route=MODELS,
    ),
    _case(
        "model",
        "ONNX with external data in a Constant node",
        hostile.onnx_external_in_constant,
        EXTERNAL,
        route=MODELS,
    ),
    _case("model", "pickle protocol 0", partial(hostile.pickle_bytes, 0), "is a Python pickle", route=MODELS),
    _case("model", "pickle protocol 5", partial(hostile.pickle_bytes, 5), "is a Python pickle", route=MODELS),
    _case(
        "model", "long protocol 0 pickle", hostile.long_protocol_0_pickle, "is a Python pickle", route=MODELS
    ),
    _case(
        "model",
        "torch.save of a state dict",
        hostile.torch_save_state_dict,
        "torch.save checkpoint",
        route=MODELS,
    ),
    _case(
        "model",
        "TorchScript with extra files",
        hostile.torchscript_with_extra_files,
        "extra/notes.txt",
        route=MODELS,
    ),
    _case(
        "model",
        "TorchScript with a pickle added",
        hostile.torchscript_with_added_pickle,
        "payload.pkl",
        route=MODELS,
    ),
    _case(
        "model", "zip whose marker member declares 2 GiB", hostile.torchscript_bomb, ZIP_BOMB, route=MODELS
    ),
    _case("model", "empty zip", hostile.empty_zip, "not an ONNX, TorchScript or torch.export", route=MODELS),
    _case("request", "body over the upload limit", lambda: bytes(UPLOAD_LIMIT + 1), "limited to", status=413),
    _case("request", "empty body", lambda: b"", "the request body is empty", route=MODELS),
]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """SQLite and a broker never reached: uploads do not dispatch."""
    folder = tmp_path_factory.mktemp("hostile")
    database = f"sqlite:///{folder / 'jobs.sqlite3'}"
    overrides = {"max_upload_bytes": UPLOAD_LIMIT, "max_probe_set_pixels": PIXEL_BUDGET}
    with make_client(folder, database, "redis://127.0.0.1:1/1", **overrides) as test_client:
        yield test_client


@pytest.mark.parametrize("case", UPLOAD_CASES, ids=lambda case: f"{case.kind}: {case.name}")
def test_a_hostile_upload_gets_a_clean_problem(client: TestClient, case: UploadCase) -> None:
    response = client.post(case.route, content=case.body(), headers=OCTET, params={"filename": "upload.bin"})
    assert response.status_code == case.status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert case.detail in response.json()["detail"], response.json()
    root = client.app.state.runtime.storage.root
    for leak in (str(root), "/tmp", "Traceback", "passwd"):
        assert leak not in response.text
    assert list((root / "uploads").iterdir()) == []


def test_honest_uploads_beside_the_hostile_ones_are_accepted(client: TestClient) -> None:
    """The refusals above are not a route refusing everything; details say what the headers say."""
    images = client.post(PROBES, content=hostile.zip_of_pngs(3), headers=OCTET)
    assert images.status_code == 201, images.text
    assert images.json()["details"] == {"images": 3, "labelled": False, "shape": [1, 8, 8], "channels": 1}
    long_names = hostile.zip_of({"n" * 300 + f"{index}.png": hostile.good_png() for index in range(2)})
    assert client.post(PROBES, content=long_names, headers=OCTET).status_code == 201  # never a file name
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((4, 8, 8, 3), np.uint8), y=np.arange(4))
    arrays = client.post(PROBES, content=buffer.getvalue(), headers=OCTET)
    assert arrays.status_code == 201, arrays.text
    assert arrays.json()["details"] == {"images": 4, "labelled": True, "shape": [8, 8, 3], "channels": None}
    for model, format in ((hostile.onnx_model(), "onnx"), (hostile.torchscript(), "torchscript")):
        response = client.post(MODELS, content=model, headers=OCTET)
        assert response.status_code == 201 and response.json()["format"] == format, response.text


# --- the engine's messages, where the API's scrubbing cannot hide a leak -----------------------------------


def _suffix(case: UploadCase) -> str:
    """The suffix the worker's link gives the file: what its bytes would be stored as."""
    if case.kind == "array":
        return ".npz" if case.body()[:2] == b"PK" else ".npy"
    return ".zip"


PROBE_CASES = [case for case in UPLOAD_CASES if case.kind in ("probe image", "zip", "array")]


@pytest.mark.parametrize("case", PROBE_CASES, ids=lambda case: f"{case.kind}: {case.name}")
def test_probe_refusals_name_no_directory_at_upload_or_in_the_worker(
    tmp_path: Path, case: UploadCase
) -> None:
    path = tmp_path / "work" / "job-1" / "inputs" / f"probes{_suffix(case)}"
    path.parent.mkdir(parents=True)
    path.write_bytes(case.body())
    with pytest.raises(ProbeError) as at_upload:
        inspect_probe_file(path, max_images=1000, max_total_pixels=PIXEL_BUDGET)
    assert case.detail in str(at_upload.value)
    with pytest.raises(ProbeError) as in_worker:
        load_probes(path, Preprocessing(), None, max_images=1000, max_total_pixels=PIXEL_BUDGET)
    for message in (str(at_upload.value), str(in_worker.value)):
        assert str(tmp_path) not in message and "job-1" not in message and message.startswith(path.name)


MODEL_CASES = [case for case in UPLOAD_CASES if case.kind == "model"]


@pytest.mark.parametrize("case", MODEL_CASES, ids=lambda case: case.name)
def test_model_refusals_name_no_directory_nor_the_external_location(tmp_path: Path, case: UploadCase) -> None:
    path = tmp_path / "work" / "job-1" / "inputs" / "model.onnx"
    path.parent.mkdir(parents=True)
    path.write_bytes(case.body())
    with pytest.raises(UnsafeArtifactError) as refused:
        load_model(path)
    message = str(refused.value)
    assert case.detail in message and message.startswith("model.onnx")
    assert str(tmp_path) not in message and "passwd" not in message


# --- headers only at upload, everything in the worker -------------------------------------------------------


def test_a_zip_of_200_large_images_is_inspected_from_headers_only(tmp_path: Path) -> None:
    """3.4 G pixels: decoding them would take minutes and gigabytes; their headers take milliseconds."""
    path = tmp_path / "probes.zip"
    path.write_bytes(hostile.zip_of_black_pngs())
    started = time.perf_counter()
    info = inspect_probe_file(path, max_images=1000, max_total_pixels=10**11)
    assert time.perf_counter() - started < 5
    assert info == ProbeFileInfo("zip", images=200, labelled=False, shape=(1, 4096, 4096), channels=1)
    with pytest.raises(ProbeError, match=r"holds 10066329600 pixels .*at most 10000000 \(pixel budget"):
        load_probes(path, Preprocessing(), None, max_images=1000, max_total_pixels=PIXEL_BUDGET)


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        (hostile.png_corrupt_pixels, "broken data stream"),
        (hostile.png_ztxt_bomb_after_pixels, "Decompressed data too large"),
    ],
)
def test_damage_past_the_header_passes_upload_and_fails_the_decode_cleanly(
    tmp_path: Path, image: Callable[[], bytes], reason: str
) -> None:
    path = tmp_path / "inputs" / "probes.zip"
    path.parent.mkdir()
    path.write_bytes(hostile.zip_with("002.png", image()))
    assert inspect_probe_file(path, max_images=10, max_total_pixels=PIXEL_BUDGET).images == 3
    with pytest.raises(ProbeError) as refused:
        load_probes(path, Preprocessing(), None, max_images=10)
    message = str(refused.value)
    assert message.startswith("probes.zip: 002.png: not a readable PNG or JPEG image (")
    assert reason.lower() in message.lower() and str(tmp_path) not in message


def test_a_zip_of_class_folders_loads_in_place(tmp_path: Path) -> None:
    path = tmp_path / "probes.zip"
    members = {"7/b.png": hostile.png(), "3/a.png": hostile.png(fill=255), "3/notes.txt": b"left alone"}
    path.write_bytes(hostile.zip_of(members))
    probes = load_probes(path, Preprocessing(), (None, 1, 8, 8), max_images=10)
    assert probes.names == ["3/a.png", "7/b.png"] and probes.labels.tolist() == [3, 7]
    assert probes.x[0].min() == 1.0 and probes.x[1].max() == 0.0
    assert probes.source == "probes.zip" and probes.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert list(tmp_path.iterdir()) == [path]  # nothing extracted


def test_arrays_are_bounded_by_their_header_in_the_worker(tmp_path: Path) -> None:
    path = tmp_path / "probes.npy"
    path.write_bytes(hostile.npy_over_budget())
    with pytest.raises(ProbeError, match="pixel budget"):
        load_probes(path, Preprocessing(), None, max_images=1000, max_total_pixels=PIXEL_BUDGET)
    np.save(path, np.zeros((4, 1, 8, 8), np.float32))
    within = load_probes(path, Preprocessing(), None, max_images=10, max_total_pixels=256)
    assert within.x.shape == (4, 1, 8, 8)
    with pytest.raises(ProbeError, match=r"the set holds 256 pixels .*at most 255"):
        load_probes(path, Preprocessing(), None, max_images=10, max_total_pixels=255)


def test_what_a_zip_unpacks_to_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "probes.zip"
    path.write_bytes(hostile.zip_of_pngs(3))
    monkeypatch.setattr(probes_module, "MAX_ZIP_BYTES", 3 * len(hostile.good_png()) - 1)
    with pytest.raises(
        ProbeError, match=r"probes\.zip: the zip unpacks to more than \d+ bytes \(zip bomb guard\)"
    ):
        inspect_probe_file(path, max_images=10, max_total_pixels=PIXEL_BUDGET)


def test_torchscript_as_torch_writes_it_is_recognized() -> None:
    assert sniff_format(hostile.torchscript(), "model.pt") == "torchscript"
