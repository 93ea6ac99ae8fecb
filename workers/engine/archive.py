"""The map archive: every map of every stage as a compressed .npy inside one zip, plus a manifest.

The zip is written under a temporary name and renamed into place only when complete, so a crashed or
retried run never leaves a torn archive where a reader would find it.
"""

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

MANIFEST_VERSION = "1.0"


class MapArchive:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._partial = path.with_name(path.name + ".partial")
        self._zip = zipfile.ZipFile(self._partial, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1)
        self._entries: list[dict[str, Any]] = []

    def add_array(self, name: str, array: np.ndarray, **metadata: Any) -> None:
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
        data = buffer.getvalue()
        self._zip.writestr(name, data)
        entry = {"path": name, "shape": list(array.shape), "dtype": str(array.dtype)}
        self._entries.append(entry | {"sha256": hashlib.sha256(data).hexdigest(), **metadata})

    def add_bytes(self, name: str, data: str | bytes) -> None:
        self._zip.writestr(name, data)

    def commit(self) -> None:
        """Write the manifest and move the finished archive into place."""
        manifest = {"manifest_version": MANIFEST_VERSION, "arrays": self._entries}
        self._zip.writestr("manifest.json", json.dumps(manifest, indent=2))
        self._zip.close()
        os.replace(self._partial, self.path)

    def discard(self) -> None:
        self._zip.close()
        self._partial.unlink(missing_ok=True)

    def __enter__(self) -> "MapArchive":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if kind is not None:
            self.discard()
