"""The map archive: every map of every stage as a compressed .npy inside one zip, plus a manifest.

The zip is written under a temporary name and renamed into place only when complete, so a crashed or
retried run never leaves a torn archive where a reader would find it. Compression and checksums run on
one background thread (zlib and hashlib release the GIL), in the order the arrays were added, while the
audit computes the next maps.
"""

import hashlib
import io
import json
import os
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

MANIFEST_VERSION = "1.0"
MAX_PENDING = 8


class MapArchive:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._partial = path.with_name(path.name + ".partial")
        self._zip = zipfile.ZipFile(self._partial, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1)
        self._entries: list[dict[str, Any]] = []
        self._names: set[str] = set()  # a zip may hold one name twice; a reader would see either
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="map-archive")
        self._pending: list[Future[None]] = []

    def add_array(self, name: str, array: np.ndarray, **metadata: Any) -> None:
        self._claim(name)
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
        data = buffer.getvalue()
        entry = {
            "path": name,
            "shape": list(array.shape),
            "dtype": str(array.dtype),
            "sha256": None,
            **metadata,
        }
        self._entries.append(entry)

        def write() -> None:
            entry["sha256"] = hashlib.sha256(data).hexdigest()
            self._zip.writestr(name, data)

        self._queue(self._writer.submit(write))

    def add_archive(self, part: Path) -> None:
        """Every array of another archive (a unit's share of the maps), in its order, as it was entered."""
        with zipfile.ZipFile(part) as source:
            for entry in json.loads(source.read("manifest.json"))["arrays"]:
                self._claim(entry["path"])
                self._entries.append(entry)
                self._queue(
                    self._writer.submit(self._zip.writestr, entry["path"], source.read(entry["path"]))
                )

    def add_bytes(self, name: str, data: str | bytes) -> None:
        self._claim(name)
        self._queue(self._writer.submit(self._zip.writestr, name, data))

    def _claim(self, name: str) -> None:
        if name in self._names:
            raise ValueError(f"{name} is in the map archive already")
        self._names.add(name)

    def _queue(self, future: "Future[None]") -> None:
        """At most ``MAX_PENDING`` writes wait, so queued bytes stay bounded when maps come faster."""
        self._pending.append(future)
        if len(self._pending) > MAX_PENDING:
            self._pending[-MAX_PENDING - 1].result()

    def commit(self) -> None:
        """Write the manifest and move the finished archive into place."""
        self._drain()
        manifest = {"manifest_version": MANIFEST_VERSION, "arrays": self._entries}
        self._zip.writestr("manifest.json", json.dumps(manifest, indent=2))
        self._zip.close()
        os.replace(self._partial, self.path)

    def discard(self) -> None:
        for future in self._pending:
            future.cancel()
        self._writer.shutdown(wait=True)
        self._zip.close()
        self._partial.unlink(missing_ok=True)

    def _drain(self) -> None:
        """Wait for every queued write; the first failure is raised here."""
        self._writer.shutdown(wait=True)
        for future in self._pending:
            future.result()

    def __enter__(self) -> "MapArchive":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if kind is not None:
            self.discard()
