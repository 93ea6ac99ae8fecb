"""Receiving uploads: streamed with a size cap and the tenant's storage quota, validated from headers,
stored once per sha256 (the blob is shared; each tenant records its own artifact)."""

import re
from collections.abc import AsyncIterator

from starlette.concurrency import run_in_threadpool

from service.api.auth import Caller
from service.api.problems import Problem
from service.api.runtime import Runtime
from service.api.validation import validate_artifact
from workers.core import problems
from workers.core.errors import AuditInputError
from workers.core.outages import DISK, OBJECT_STORE, OUTAGES, require_free_disk
from workers.core.requests import ArtifactKind
from workers.core.storage import UploadTooLarge
from workers.core.store.artifacts import Artifact

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


async def receive_artifact(
    body: AsyncIterator[bytes],
    content_length: int | None,
    kind: ArtifactKind,
    filename: str | None,
    caller: Caller,
    runtime: Runtime,
) -> tuple[Artifact, bool]:
    """Store and record the upload; ``False`` when the tenant uploaded the same bytes as this kind before."""
    room = runtime.settings.max_stored_bytes - runtime.store.artifacts.stored_bytes(caller.tenant)
    limit = min(runtime.settings.max_upload_bytes, max(room, 0))
    if content_length is not None and content_length > limit:
        raise _too_large(runtime, room)
    # answered 507 below the floor
    await run_in_threadpool(require_free_disk, runtime.storage.root, runtime.settings.min_free_disk_mib)
    name = _SAFE_NAME.sub("_", filename or "").lstrip(".")[:100] or kind.value
    upload = runtime.storage.new_upload(limit, name)
    try:
        async for chunk in body:
            upload.write(chunk)
        sha256 = upload.close()
    except UploadTooLarge:
        upload.discard()
        raise _too_large(runtime, room) from None
    except BaseException:
        upload.discard()
        raise
    finally:
        runtime.metrics.upload_bytes.labels(kind.value).inc(upload.size)
    if upload.size == 0:
        upload.discard()
        raise Problem(problems.EMPTY_UPLOAD, "the request body is empty; send the file's bytes as the body")
    try:
        known = runtime.store.artifacts.get_artifact(caller.tenant, sha256, kind)
        if known is not None and await run_in_threadpool(runtime.storage.has_blob, sha256):
            upload.discard()
            return known, False
        format, details = await run_in_threadpool(
            validate_artifact,
            upload.path,
            kind,
            runtime.settings.max_probe_images,
            runtime.settings.max_probe_set_pixels,
        )
    except AuditInputError as error:
        upload.discard()
        raise Problem(problems.INVALID_ARTIFACT, str(error)) from None
    except BaseException:
        upload.discard()
        raise
    await run_in_threadpool(runtime.storage.keep, upload, sha256)
    OUTAGES.working(DISK, OBJECT_STORE)
    return runtime.store.artifacts.add_artifact(
        caller.tenant, sha256, kind.value, format, upload.size, details
    )


def _too_large(runtime: Runtime, room: int) -> Problem:
    limit = runtime.settings.max_upload_bytes
    if room < limit:
        return Problem(
            problems.STORAGE_QUOTA,
            f"this upload would take the tenant past its limit of {runtime.settings.max_stored_bytes} stored "
            f"bytes ({max(room, 0)} left); delete finished audits (DELETE /v1/audits/{{id}}) to make room",
        )
    return Problem(
        problems.UPLOAD_TOO_LARGE, f"uploads are limited to {limit} bytes (SALIENCY_MAX_UPLOAD_BYTES)"
    )
