"""Receiving uploads: streamed with a size cap, validated, stored once per sha256."""

import re
from collections.abc import AsyncIterator

from starlette.concurrency import run_in_threadpool

from service.problems import Problem
from service.runtime import Runtime
from service.validation import validate_artifact
from workers.engine.errors import AuditInputError
from workers.requests import ArtifactKind
from workers.storage import UploadTooLarge
from workers.store.jobs import Artifact

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


async def receive_artifact(
    body: AsyncIterator[bytes],
    content_length: int | None,
    kind: ArtifactKind,
    filename: str | None,
    runtime: Runtime,
) -> tuple[Artifact, bool]:
    """Store and record the upload; ``False`` when the same bytes were uploaded as this kind before."""
    limit = runtime.settings.max_upload_bytes
    if content_length is not None and content_length > limit:
        raise _too_large(limit)
    name = _SAFE_NAME.sub("_", filename or "").lstrip(".")[:100] or kind.value
    upload = runtime.storage.new_upload(limit, name)
    try:
        async for chunk in body:
            upload.write(chunk)
        sha256 = upload.close()
    except UploadTooLarge:
        upload.discard()
        raise _too_large(limit) from None
    except BaseException:
        upload.discard()
        raise
    if upload.size == 0:
        upload.discard()
        raise Problem(422, "Empty upload", "the request body is empty; send the file's bytes as the body")
    known = runtime.store.get_artifact(sha256, kind)
    if known is not None:
        upload.discard()
        return known, False
    try:
        format, details = await run_in_threadpool(
            validate_artifact, upload.path, kind, runtime.settings.max_probe_images
        )
    except AuditInputError as error:
        upload.discard()
        raise Problem(422, "Invalid artifact", str(error)) from None
    except BaseException:
        upload.discard()
        raise
    runtime.storage.keep(upload, sha256)
    return runtime.store.add_artifact(sha256, kind.value, format, upload.size, details)


def _too_large(limit: int) -> Problem:
    return Problem(
        413, "Upload too large", f"uploads are limited to {limit} bytes (SALIENCY_MAX_UPLOAD_BYTES)"
    )
