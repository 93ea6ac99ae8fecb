"""Image-passes: how many images went forward and backward through a model, a cost that compares across
machines where seconds do not. A 16-image batch counts 16; a pass that resumes from recorded values of
the trained model counts like a full one (its cost lies between none and one).

Every counter open around a pass gets it: the audit opens one for the class predictions and one per
method around its maps, and reports their sum as its total. Work one method computes for others (a
shared part) counts once, for the first; Gradient x Input's gradient, taken from Gradient's at the same
stage, counts for Gradient. Passes outside the maps and classes (the conversion check, input
invariance's logit check) are not counted.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from workers.core.report import ImagePasses

_active: ContextVar[tuple[dict[str, int], ...]] = ContextVar("image_passes", default=())


def count_passes(images: int, backward: bool) -> None:
    """``images`` went forward through a model, and back through it where ``backward``."""
    for counter in _active.get():
        counter["forward"] += images
        counter["backward"] += images if backward else 0


@contextmanager
def counting(counter: dict[str, int]) -> Iterator[dict[str, int]]:
    """Count the passes run inside into ``counter`` ({"forward": n, "backward": n})."""
    token = _active.set((*_active.get(), counter))
    try:
        yield counter
    finally:
        _active.reset(token)


def new_counter() -> dict[str, int]:
    return {"forward": 0, "backward": 0}


def as_report(counter: dict[str, int]) -> ImagePasses:
    return ImagePasses(**counter)
