"""One storage interface, two stores: a local folder and a real S3-compatible server on loopback (moto).
Everything the API and the workers do with stored files behaves the same on both."""

import hashlib
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.services import new_bucket
from workers.core.config import Settings
from workers.core.object_store import FolderStore, S3Store
from workers.core.report import ARCHIVE_FILE, HTML_FILE, REPORT_FILE
from workers.core.storage import Storage
from workers.core.store.artifacts import Artifact


@pytest.fixture(params=["folder", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "folder":
        storage = Storage(tmp_path / "data")
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        settings = Settings(
            data_dir=tmp_path / "data",
            storage_url=f"s3://{new_bucket(endpoint)}/audits",
            s3_endpoint=endpoint,
            s3_region="us-east-1",
        )
        storage = Storage.from_settings(settings)
        assert isinstance(storage.objects, S3Store)
    storage.prepare()
    return storage


def _kept(storage: Storage, data: bytes, name: str = "model.onnx") -> Artifact:
    upload = storage.new_upload(len(data), name)
    upload.write(data)
    sha256 = upload.close()
    storage.keep(upload, sha256)
    assert not upload.path.parent.exists()  # the received file does not linger on the API's disk
    return Artifact("t", sha256, "model", "onnx", len(data), {}, datetime.now(UTC))


def _outputs(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / REPORT_FILE).write_text('{"verdict": "pass"}')
    (folder / HTML_FILE).write_text("<!doctype html><p>report</p>")
    (folder / ARCHIVE_FILE).write_bytes(os.urandom(3 << 20))  # several chunks of a stream
    return folder


def test_a_kept_upload_is_read_back_by_a_worker_byte_for_byte(storage: Storage, tmp_path: Path) -> None:
    data = os.urandom(100_000)
    artifact = _kept(storage, data)
    assert storage.has_blob(artifact.sha256) and not storage.has_blob("0" * 64)
    work = storage.new_work_dir("job", 1)
    path = storage.fetch_artifact(artifact, work, "model")
    assert path.name == "model.onnx" and path.read_bytes() == data
    storage.check()


def test_an_artifact_whose_stored_bytes_changed_is_refused(storage: Storage, tmp_path: Path) -> None:
    artifact = _kept(storage, b"the model that was uploaded")
    tampered = tmp_path / "tampered"
    tampered.write_bytes(b"other bytes")
    storage.objects.put(f"blobs/{artifact.sha256[:2]}/{artifact.sha256}", tampered)
    with pytest.raises(OSError, match="does not match its hash"):
        storage.fetch_artifact(artifact, storage.new_work_dir("job", 1), "model")


def test_published_results_are_served_whole_and_signed_urls_need_no_key(
    storage: Storage, tmp_path: Path
) -> None:
    out = _outputs(tmp_path / "out")
    expected = {name: (out / name).read_bytes() for name in (REPORT_FILE, HTML_FILE, ARCHIVE_FILE)}
    result = storage.publish_results("job", 2, out)
    assert result.archive_sha256 == hashlib.sha256(expected[ARCHIVE_FILE]).hexdigest()
    for name, data in expected.items():
        stored = storage.open_result("job", 2, name)
        assert stored is not None and stored.size == len(data)
        served = stored.path.read_bytes() if stored.path is not None else b"".join(stored.chunks or [])
        assert served == data
    assert storage.open_result("job", 1, REPORT_FILE) is None  # another attempt's keys
    url = storage.result_url("job", 2, ARCHIVE_FILE, expires_s=60)
    if isinstance(storage.objects, FolderStore):
        assert url is None
    else:
        response = httpx.get(url)  # as a browser or a pipeline would, without the API's key
        assert response.is_success and response.content == expected[ARCHIVE_FILE]
        assert response.headers["content-type"] == "application/zip"


def test_removing_a_jobs_results_removes_every_attempt_and_nothing_else(
    storage: Storage, tmp_path: Path
) -> None:
    storage.publish_results("gone", 1, _outputs(tmp_path / "a"))
    storage.publish_results("gone", 2, _outputs(tmp_path / "b"))
    storage.publish_results("gone-too-similar", 1, _outputs(tmp_path / "c"))
    storage.remove_results("gone")
    assert storage.open_result("gone", 1, REPORT_FILE) is None
    assert storage.open_result("gone", 2, ARCHIVE_FILE) is None
    assert storage.open_result("gone-too-similar", 1, REPORT_FILE) is not None


def test_expiry_spares_a_blob_kept_again_since_its_cutoff(storage: Storage) -> None:
    artifact = _kept(storage, b"shared bytes")
    time.sleep(1.1)  # S3 keeps modification times to the second
    cutoff = time.time()
    time.sleep(1.1)
    _kept(storage, b"shared bytes")  # uploaded again: wanted now
    storage.remove_blob(artifact.sha256, untouched_since=cutoff)
    assert storage.has_blob(artifact.sha256)
    storage.remove_blob(artifact.sha256, untouched_since=time.time() + 2)
    assert not storage.has_blob(artifact.sha256)


def test_a_bucket_that_does_not_exist_fails_readiness_without_credentials_in_the_message(
    s3_endpoint: str, tmp_path: Path
) -> None:
    objects = S3Store("s3://no-such-bucket/x", s3_endpoint, "us-east-1")
    with pytest.raises(OSError) as refused:
        objects.check()
    assert "no-such-bucket" in str(refused.value) and "test-secret" not in str(refused.value)
