"""Uploads of models, probe sets and training sets: the raw file as the request body."""

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response

from service.api.artifacts import receive_artifact
from service.api.auth import Reader, Submitter
from service.api.openapi import response_headers
from service.api.problems import Problem, not_found
from service.api.routes import AUTHENTICATED, problem_responses
from service.api.runtime import RuntimeDep
from service.api.schemas import ArtifactOut
from workers.core import problems
from workers.core.requests import ArtifactKind

router = APIRouter(prefix="/v1", tags=["artifacts"])

_RAW_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}
_KINDS = (  # path, kind, resource (in operation ids), what the file is
    ("/models", ArtifactKind.model, "model", "an ONNX, TorchScript (.pt) or torch.export (.pt2) model"),
    (
        "/probe-sets",
        ArtifactKind.probes,
        "probe_set",
        "probe images: .npy/.npz (x, optional labels y) or a zip of PNG/JPEG",
    ),
    (
        "/training-sets",
        ArtifactKind.training_data,
        "training_set",
        "training data: .npz with x and y, or a zip of class folders",
    ),
)
_LOCATION = {"headers": response_headers("Location")}
_NOT_RAW = ("multipart/", "application/json", "application/x-www-form-urlencoded", "text/")
Sha256Path = Annotated[str, Path(max_length=64, description="sha256 of the artifact")]


def _add_routes(path: str, kind: ArtifactKind, resource: str, what: str) -> None:
    @router.post(
        path,
        status_code=201,
        response_model=ArtifactOut,
        responses={
            201: _LOCATION,
            200: {"description": "The same bytes were uploaded before", "model": ArtifactOut} | _LOCATION,
        }
        | problem_responses(
            *AUTHENTICATED,
            problems.UPLOAD_TOO_LARGE,
            problems.STORAGE_QUOTA,
            problems.UNSUPPORTED_MEDIA_TYPE,
            problems.INVALID_ARTIFACT,
            problems.EMPTY_UPLOAD,
            problems.INSUFFICIENT_STORAGE,
        ),
        openapi_extra=_RAW_BODY,
        summary=f"Upload {what}",
        description="Send the file's bytes as the body (Content-Type: application/octet-stream). Stored by "
        "sha256: uploading the same file again answers 200 with the stored artifact. Checked from its "
        "headers here; the worker reads it in full.",
        name=f"upload_{resource}",
    )
    async def upload(
        request: Request,
        response: Response,
        runtime: RuntimeDep,
        caller: Submitter,
        filename: Annotated[
            str | None, Query(max_length=255, description="Name used in messages about the file")
        ] = None,
        content_type: Annotated[str | None, Header(include_in_schema=False)] = None,  # _RAW_BODY declares it
    ) -> ArtifactOut:
        if content_type is not None and content_type.lower().startswith(_NOT_RAW):
            raise Problem(
                problems.UNSUPPORTED_MEDIA_TYPE,
                "send the file's raw bytes as the body with Content-Type: application/octet-stream, not a "
                "form or text: curl --data-binary @FILE -H 'Content-Type: application/octet-stream'",
            )
        length = request.headers.get("content-length")
        size = int(length) if length is not None and length.isdigit() else None
        artifact, created = await receive_artifact(request.stream(), size, kind, filename, caller, runtime)
        href = f"/v1{path}/{artifact.sha256}"
        response.headers["Location"] = href
        if not created:
            response.status_code = 200
        return ArtifactOut.of(artifact, href)

    @router.get(
        f"{path}/{{sha256}}",
        response_model=ArtifactOut,
        responses=problem_responses(*AUTHENTICATED, problems.NOT_FOUND),
        summary=f"Describe an uploaded {kind.value.replace('_', ' ')} artifact",
        name=f"get_{resource}",
    )
    def describe(sha256: Sha256Path, runtime: RuntimeDep, caller: Reader) -> ArtifactOut:
        artifact = runtime.store.artifacts.get_artifact(caller.tenant, sha256, kind)
        if artifact is None:
            raise not_found(f"{kind.value} artifact {sha256}")
        return ArtifactOut.of(artifact, f"/v1{path}/{sha256}")


for _path, _kind, _resource, _what in _KINDS:
    _add_routes(_path, _kind, _resource, _what)
