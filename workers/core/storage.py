"""Where an audit's files are: uploads stored content-addressed by sha256, per-attempt work folders,
published results.

Uploads stream to this machine's disk while they are hashed and checked, and work folders stay on the
worker's disk; what several machines read (stored artifacts, results) goes to the object store.
"""

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from workers.core.config import Settings
from workers.core.object_store import FolderStore, ObjectStore, S3Store, StoredObject, StoreUnavailable
from workers.core.report import ARCHIVE_FILE, HTML_FILE, REPORT_FILE
from workers.core.store.artifacts import Artifact
from workers.core.store.states import JobResult

log = logging.getLogger(__name__)

# the engine tells formats apart by file suffix
_FORMAT_SUFFIXES = {
    "onnx": ".onnx",
    "torchscript": ".pt",
    "torch_export": ".pt2",
    "npy": ".npy",
    "npz": ".npz",
    "zip": ".zip",
}


# a partial upload whose receiving process is gone, and that nothing wrote to for this long, is removed
# (quiet for a while too: a process of another PID namespace sharing the folder would look gone)
ORPHAN_QUIET_S = 30.0


class UploadTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"upload exceeds {limit} bytes")
        self.limit = limit


class Upload:
    """An upload being received: hashed and size-checked as it streams to a temporary file."""

    def __init__(self, folder: Path, max_bytes: int, name: str) -> None:
        """``name`` is what messages about the file call it (validation reads it from the path)."""
        self.max_bytes = max_bytes
        self.size = 0
        self._hash = hashlib.sha256()
        # the receiving process's pid in the name: a folder whose process died (killed mid-upload) is
        # removed by the next sweep on this machine, not an hour later
        self.path = Path(tempfile.mkdtemp(dir=folder, prefix=f"upload-{os.getpid()}-")) / name
        self._file = self.path.open("wb")

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise UploadTooLarge(self.max_bytes)
        self._hash.update(chunk)
        self._file.write(chunk)

    def close(self) -> str:
        """Finish writing; the sha256 of what was received."""
        self._file.close()
        return self._hash.hexdigest()

    def discard(self) -> None:
        """Remove what was received; closing may fail again on a full disk (the buffer is flushed)."""
        try:
            with contextlib.suppress(OSError):
                self._file.close()
        finally:
            shutil.rmtree(self.path.parent, ignore_errors=True)


RESULT_MEDIA_TYPES = {
    REPORT_FILE: "application/json",
    HTML_FILE: "text/html",
    ARCHIVE_FILE: "application/zip",
}


class Storage:
    """Uploads being received and attempts' work folders on this machine's disk (under ``root``);
    stored artifacts and published results in the object store every machine shares."""

    def __init__(self, root: Path, objects: ObjectStore | None = None) -> None:
        self.root = root
        self.objects: ObjectStore = objects or FolderStore(root)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Storage":
        if settings.storage_url is None:
            return cls(settings.data_dir)
        return cls(settings.data_dir, S3Store(settings.storage_url, settings.s3_endpoint, settings.s3_region))

    def prepare(self) -> None:
        for folder in ("uploads", "work"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)

    def check(self) -> None:
        """Raise ``OSError`` unless uploads can be received and kept (readiness)."""
        probe = self.root / "uploads" / f".ready-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
        self.objects.check()

    def new_upload(self, max_bytes: int, name: str) -> Upload:
        return Upload(self.root / "uploads", max_bytes, name)

    def keep(self, upload: Upload, sha256: str) -> None:
        """Store a received upload under its hash. Bytes stored before are stored again, which marks them
        wanted now: expiry spares them (``remove_blob``)."""
        try:
            self.objects.put(_blob_key(sha256), upload.path)
        finally:
            upload.discard()

    def has_blob(self, sha256: str) -> bool:
        return self.objects.modified_at(_blob_key(sha256)) is not None

    def fetch_artifact(self, artifact: Artifact, folder: Path, name: str) -> Path:
        """The artifact's bytes under ``name`` with its format's suffix, for the engine to read."""
        path = folder / f"{name}{_FORMAT_SUFFIXES[artifact.format]}"
        if self.objects.fetch(_blob_key(artifact.sha256), path) != artifact.sha256:  # a wrong audit
            raise OSError(f"stored artifact {artifact.sha256} does not match its hash")
        return path

    def work_dir(self, job_id: str, attempt: int) -> Path:
        return self.root / "work" / f"{job_id}-{attempt}"

    def helper_dir(self, job_id: str, attempt: int) -> Path:
        """A helping worker's folder for units of the attempt: beside the attempt's own (which its worker
        removes when done, while a helper may still be finishing a unit), in use while the attempt is."""
        return self.root / "work" / f"{job_id}-{attempt}-helper-{os.getpid()}"

    def new_work_dir(self, job_id: str, attempt: int) -> Path:
        folder = self.work_dir(job_id, attempt)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    def open_result(self, job_id: str, attempt: int, name: str) -> StoredObject | None:
        return self.objects.open(_result_key(job_id, attempt, name))

    def result_url(self, job_id: str, attempt: int, name: str, expires_s: int) -> str | None:
        """A signed URL to download the result from the object store directly; ``None`` where the store
        has none (the API then sends the bytes itself)."""
        return self.objects.signed_url(_result_key(job_id, attempt, name), expires_s)

    def remove_results(self, job_id: str) -> None:
        """Every attempt's results of a deleted or expired job (and its units' files)."""
        with _left_if_unreachable(f"results of job {job_id}"):
            self.objects.delete_prefix(f"results/{job_id}")
            self.objects.delete_prefix(f"units/{job_id}/")  # a fanned-out audit's, if its coordinator died

    def remove_blob(self, sha256: str, untouched_since: float) -> None:
        """Unless an upload kept it again since (a row for it may be on its way)."""
        key = _blob_key(sha256)
        with _left_if_unreachable(f"blob {sha256}"):
            modified = self.objects.modified_at(key)
            if modified is not None and modified < untouched_since:
                self.objects.delete(key)

    def remove_abandoned(self, older_than_s: float, attempts_in_use: set[str]) -> int:
        """Partial uploads whose receiving process is gone or that are untouched for ``older_than_s``, and
        work folders of attempts that no longer hold their job, untouched as long; how many were removed."""
        now = time.time()
        cutoff = now - older_than_s
        removed = 0
        for folder in (*(self.root / "uploads").glob("upload-*"), *(self.root / "work").iterdir()):
            attempt = "-".join(folder.name.split("-")[:2])  # of a work or a helper folder
            in_use = folder.parent.name == "work" and attempt in attempts_in_use
            orphaned = (
                folder.parent.name == "uploads"
                and not _receiver_alive(folder.name)
                and _last_written(folder) < now - ORPHAN_QUIET_S
            )
            if folder.is_dir() and not in_use and (orphaned or folder.stat().st_mtime < cutoff):
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed

    def publish_results(self, job_id: str, attempt: int, out_dir: Path) -> JobResult:
        """Store a finished attempt's report, HTML report and archive; returns their sizes and hashes.
        Each attempt publishes under keys of its own: an attempt presumed lost that still finishes cannot
        replace the files of the attempt the job store recorded."""
        report, archive = out_dir / REPORT_FILE, out_dir / ARCHIVE_FILE
        result = JobResult(
            file_sha256(report), report.stat().st_size, file_sha256(archive), archive.stat().st_size
        )
        for name, media_type in RESULT_MEDIA_TYPES.items():
            key = _result_key(job_id, attempt, name)
            self.objects.put(key, out_dir / name, media_type, download_name=f"audit-{job_id}-{name}")
        return result


@contextlib.contextmanager
def _left_if_unreachable(what: str) -> Iterator[None]:
    """Removals follow their rows, which are gone already: a store that fails now leaves the object
    (logged, for the bucket's lifecycle rules) rather than fail the request or the retention round."""
    try:
        yield
    except StoreUnavailable as error:
        log.warning("%s not removed (%s); remove it with the bucket's lifecycle rules", what, error)


def _last_written(folder: Path) -> float:
    try:
        return max([folder.stat().st_mtime, *(entry.stat().st_mtime for entry in folder.iterdir())])
    except OSError:  # removed meanwhile, or being written: not to be removed now
        return time.time()


def _receiver_alive(folder_name: str) -> bool:
    """Whether the process named in a partial upload's folder (``upload-<pid>-...``) still runs here."""
    pid = folder_name.split("-")[1]
    if not pid.isdigit():
        return True  # a folder of an older version: left to the age rule
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _blob_key(sha256: str) -> str:
    return f"blobs/{sha256[:2]}/{sha256}"


def _result_key(job_id: str, attempt: int, name: str) -> str:
    return f"results/{job_id}/{attempt}/{name}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
