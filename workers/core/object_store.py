"""Where uploads and results live: one interface, a local folder or S3-compatible object storage.

API processes and workers on several machines share an S3 bucket (through obstore, a maintained client
for S3, MinIO, Ceph, R2 and the like); one machine can keep them in a folder. Keys are relative paths
(``blobs/ab/ab12...``, ``results/<job>/<attempt>/report.json``). Every object appears whole or not at
all: a folder store renames a finished file into place, an S3 PUT is atomic.
"""

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Protocol

import obstore
import obstore.exceptions
from obstore.store import S3Store as ObstoreS3Store

_CHUNK = 1 << 20
TRANSFER_TIMEOUT = "30m"


@dataclass(frozen=True)
class StoredObject:
    """An object to send to a client: a file the server can serve, or a stream of its bytes."""

    size: int
    path: Path | None = None
    chunks: Iterator[bytes] | None = None


class ObjectStore(Protocol):
    def put(
        self, key: str, source: Path, media_type: str | None = None, download_name: str | None = None
    ) -> None:
        """Store the file under ``key``, replacing what is there; ``source`` may be moved away.
        ``download_name``: the file name a download of it is saved under, where the store serves it."""

    def modified_at(self, key: str) -> float | None:
        """When the object was last stored (POSIX seconds); ``None`` when there is none."""

    def fetch(self, key: str, target: Path) -> str:
        """Copy the object to ``target``; the sha256 of the bytes written."""

    def open(self, key: str) -> StoredObject | None:
        """The object for a download; ``None`` when there is none."""

    def signed_url(self, key: str, expires_s: int) -> str | None:
        """A URL that lets anyone holding it read the object for ``expires_s``; ``None`` where the store
        cannot sign (a folder)."""

    def delete(self, key: str) -> None:
        """Remove the object if it exists."""

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object whose key starts with ``prefix``."""

    def check(self) -> None:
        """Raise ``OSError`` unless objects can be written and removed (readiness)."""


def _write_hashing(chunks: Iterable[bytes], target: Path) -> str:
    """Write ``chunks`` to ``target`` in one pass that also hashes them: the bytes checked are the bytes
    the engine reads."""
    digest = hashlib.sha256()
    with target.open("wb") as file:
        for chunk in chunks:
            digest.update(chunk)
            file.write(chunk)
    return digest.hexdigest()


class FolderStore:
    """Objects as files under one folder; the default, and the layout of earlier versions."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / key

    def put(
        self, key: str, source: Path, media_type: str | None = None, download_name: str | None = None
    ) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)  # a fresh file: its mtime says it was stored now

    def modified_at(self, key: str) -> float | None:
        try:
            return self._path(key).stat().st_mtime
        except FileNotFoundError:
            return None

    def fetch(self, key: str, target: Path) -> str:
        with self._path(key).open("rb") as source:
            return _write_hashing(iter(lambda: source.read(_CHUNK), b""), target)

    def open(self, key: str) -> StoredObject | None:
        path = self._path(key)
        return StoredObject(size=path.stat().st_size, path=path) if path.is_file() else None

    def signed_url(self, key: str, expires_s: int) -> str | None:
        return None

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)

    def check(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        probe = self.root / f".ready-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()


class StoreUnavailable(Exception):
    """The object store could not be reached or refused a request: a passing fault, not the job's."""


@contextlib.contextmanager
def _reachable(label: str) -> Iterator[None]:
    """obstore's errors, other than a missing object, as ``StoreUnavailable`` (no credentials in it)."""
    try:
        yield
    except FileNotFoundError:
        raise
    except obstore.exceptions.BaseError as error:
        raise StoreUnavailable(f"object store {label}: {type(error).__name__}") from None


class S3Store:
    """Objects in an S3-compatible bucket. Credentials come from the standard ``AWS_*`` environment
    variables (or the machine's instance role), never from the service's own settings."""

    def __init__(self, url: str, endpoint: str | None, region: str | None) -> None:
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise ValueError(f"not an s3://bucket[/prefix] URL: {url}")
        options: dict[str, object] = {}
        if endpoint:
            options["endpoint"] = endpoint
        if region:
            options["region"] = region
        self._label = f"s3://{bucket}/{prefix}" + (f" at {endpoint}" if endpoint else "")
        self._client = ObstoreS3Store(
            bucket,
            prefix=prefix.strip("/") or None,
            client_options={
                "allow_http": (endpoint or "").startswith("http://"),
                "connect_timeout": "10s",
                "timeout": TRANSFER_TIMEOUT,  # a whole request, body included: large models, slow clients
            },
            retry_config={"max_retries": 3, "backoff": {}, "retry_timeout": timedelta(seconds=30)},
            **options,
        )

    def put(
        self, key: str, source: Path, media_type: str | None = None, download_name: str | None = None
    ) -> None:
        attributes = {}
        if media_type:
            attributes["Content-Type"] = media_type
        if download_name:  # what a signed URL's download is saved as
            attributes["Content-Disposition"] = f'attachment; filename="{download_name}"'
        with _reachable(self._label):
            obstore.put(self._client, key, source, attributes=attributes or None)

    def modified_at(self, key: str) -> float | None:
        try:
            with _reachable(self._label):
                return obstore.head(self._client, key)["last_modified"].timestamp()
        except FileNotFoundError:
            return None

    def fetch(self, key: str, target: Path) -> str:
        with _reachable(self._label):
            return _write_hashing(obstore.get(self._client, key).stream(min_chunk_size=_CHUNK), target)

    def open(self, key: str) -> StoredObject | None:
        try:
            with _reachable(self._label):
                result = obstore.get(self._client, key)
        except FileNotFoundError:
            return None
        return StoredObject(
            size=result.meta["size"], chunks=(bytes(c) for c in result.stream(min_chunk_size=_CHUNK))
        )

    def signed_url(self, key: str, expires_s: int) -> str | None:
        with _reachable(self._label):
            return obstore.sign(self._client, "GET", key, timedelta(seconds=expires_s))

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError), _reachable(self._label):
            obstore.delete(self._client, key)

    def delete_prefix(self, prefix: str) -> None:
        with _reachable(self._label):
            for batch in obstore.list(self._client, prefix.rstrip("/") + "/"):
                keys = [entry["path"] for entry in batch]
                if keys:
                    obstore.delete(self._client, keys)

    def check(self) -> None:
        key = f".ready/{os.getpid()}"
        try:
            with _reachable(self._label):
                obstore.put(self._client, key, b"")
                obstore.delete(self._client, key)
        except (StoreUnavailable, FileNotFoundError) as error:  # the bucket is missing or refuses us
            raise OSError(f"object store {self._label} is not writable: {error}") from None
