"""The problem types the API answers with: what each ``type`` URI of a problem+json body means."""

from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel

from service.api.problems import not_found
from service.api.routes import problem_responses
from workers.core import problems
from workers.core.problems import CATALOG, PROBLEM_PATH

router = APIRouter(tags=["problems"])


class ProblemTypeOut(BaseModel):
    type: str
    status: int
    title: str
    description: str


@router.get("/problems", response_model=list[ProblemTypeOut], summary="Every problem type the API uses")
def list_problem_types() -> list[ProblemTypeOut]:
    return [_out(kind) for kind in CATALOG.values()]


@router.get(
    PROBLEM_PATH + "{slug}",
    response_model=ProblemTypeOut,
    responses=problem_responses(problems.NOT_FOUND),
    summary="What a problem type means",
)
def get_problem_type(slug: Annotated[str, Path(max_length=64)]) -> ProblemTypeOut:
    kind = CATALOG.get(slug)
    if kind is None:
        raise not_found(f"problem type {slug!r}")
    return _out(kind)


def _out(kind: problems.ProblemKind) -> ProblemTypeOut:
    return ProblemTypeOut(type=kind.type, status=kind.status, title=kind.title, description=kind.description)
