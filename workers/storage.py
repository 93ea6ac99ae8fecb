"""Files on disk: uploads stored content-addressed by sha256, per-attempt work folders, published results.

Every file appears under its final name by ``os.replace`` only, so a reader never sees half a file and a
retried job never leaves a torn archive.
"""

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from workers.engine.report import ARCHIVE_FILE, REPORT_FILE
from workers.store.jobs import Artifact, JobResult

# the engine tells formats apart by file suffix
_FORMAT_SUFFIXES = {
    "onnx": ".onnx",
    "torchscript": ".pt",
    "torch_export": ".pt2",
    "npy": ".npy",
    "npz": ".npz",
    "zip": ".zip",
}


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
        self.path = Path(tempfile.mkdtemp(dir=folder, prefix="upload-")) / name
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
        self._file.close()
        shutil.rmtree(self.path.parent, ignore_errors=True)


@dataclass(frozen=True)
class Storage:
    root: Path

    def prepare(self) -> None:
        for folder in ("blobs", "uploads", "results", "work"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)

    def check(self) -> None:
        """Raise ``OSError`` unless the storage can be written (readiness)."""
        probe = self.root / "uploads" / f".ready-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()

    def new_upload(self, max_bytes: int, name: str) -> Upload:
        return Upload(self.root / "uploads", max_bytes, name)

    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256[:2] / sha256

    def link_artifact(self, artifact: Artifact, folder: Path, name: str) -> Path:
        """A link to the artifact's blob, named ``name`` with its format's suffix, for the engine to read."""
        link = folder / f"{name}{_FORMAT_SUFFIXES[artifact.format]}"
        link.symlink_to(self.blob_path(artifact.sha256))
        return link

    def keep(self, upload: Upload, sha256: str) -> Path:
        """Store a received upload under its hash; a file stored before is kept and the upload dropped."""
        target = self.blob_path(sha256)
        if target.exists():
            os.utime(target)  # wanted again: expiry keeps it (remove_blob spares fresh blobs)
            upload.discard()
        else:
            target.parent.mkdir(exist_ok=True)
            os.replace(upload.path, target)
            upload.discard()
        return target

    def work_dir(self, job_id: str, attempt: int) -> Path:
        return self.root / "work" / f"{job_id}-{attempt}"

    def new_work_dir(self, job_id: str, attempt: int) -> Path:
        folder = self.work_dir(job_id, attempt)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    def results_dir(self, job_id: str, attempt: int) -> Path:
        """Each attempt publishes into a folder of its own: an attempt presumed lost that still finishes
        cannot replace the files of the attempt the job store recorded."""
        return self.root / "results" / job_id / str(attempt)

    def remove_results(self, job_id: str) -> None:
        """Every attempt's results of a deleted or expired job."""
        shutil.rmtree(self.root / "results" / job_id, ignore_errors=True)

    def remove_blob(self, sha256: str, untouched_since: float) -> None:
        """Unless an upload kept it again since (a row for it may be on its way)."""
        path = self.blob_path(sha256)
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mtime < untouched_since:
                path.unlink()

    def remove_abandoned(self, older_than_s: float, attempts_in_use: set[str]) -> int:
        """Partial uploads, and work folders of attempts that no longer hold their job, untouched for
        ``older_than_s``; how many folders were removed."""
        cutoff = time.time() - older_than_s
        removed = 0
        for folder in (*(self.root / "uploads").glob("upload-*"), *(self.root / "work").iterdir()):
            in_use = folder.parent.name == "work" and folder.name in attempts_in_use
            if folder.is_dir() and not in_use and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed

    def publish_results(self, job_id: str, attempt: int, out_dir: Path) -> JobResult:
        """Move a finished attempt's outputs into place in one rename; returns their sizes and hashes."""
        report, archive = out_dir / REPORT_FILE, out_dir / ARCHIVE_FILE
        result = JobResult(
            file_sha256(report), report.stat().st_size, file_sha256(archive), archive.stat().st_size
        )
        target = self.results_dir(job_id, attempt)
        target.parent.mkdir(exist_ok=True)
        os.replace(out_dir, target)  # attempt numbers are never reused: the target does not exist yet
        return result


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
