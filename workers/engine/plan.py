"""The audit as a plan of independent units of work.

A unit is one draw of one test for one group of methods that share work (a family: SmoothGrad and
VarGrad, the guided methods, Gradient and Gradient x Input). A unit builds its draw's stage models itself
from the seeds, so units need nothing from each other: they run one after another in-process, or on as
many workers as listen (docs/decisions/0026). Whoever runs them, the results are merged in the order
planned (a round's dearest units first, each method's draws in order), so the report is the same number
for number. More draws for an undecided verdict are more units.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from workers.core.audit_settings import RandomizationTest
from workers.engine.checks import SanityCheck
from workers.engine.methods import SaliencyMethod


@dataclass(frozen=True)
class Unit:
    test: RandomizationTest
    draw: int
    methods: tuple[str, ...]  # one work group, in the audit's method order

    @property
    def key(self) -> str:
        """A name for the unit that is unique within its audit and safe in a storage key."""
        return f"{self.test.value}.draw-{self.draw}.{'+'.join(self.methods)}"

    @classmethod
    def from_key(cls, key: str) -> "Unit":
        test, draw, methods = key.split(".")
        return cls(RandomizationTest(test), int(draw.removeprefix("draw-")), tuple(methods.split("+")))


def work_groups(methods: Sequence[SaliencyMethod]) -> list[tuple[str, ...]]:
    """The methods grouped by family (methods made of the same parts share them only within a unit), in
    the order of each group's first method."""
    groups: dict[str, list[str]] = {}
    for method in methods:
        groups.setdefault(method.noise_key, []).append(method.name)
    return [tuple(group) for group in groups.values()]


def draw_units(
    test: RandomizationTest, methods: Sequence[SaliencyMethod], first: int, last: int
) -> list[Unit]:
    """Draws ``first`` to ``last`` (excluded) of ``test`` for ``methods``, draw by draw."""
    groups = work_groups(methods)
    return [Unit(test, draw, group) for draw in range(first, last) for group in groups]


def planned_progress(checks: list[SanityCheck], methods: list[SaliencyMethod], training: int) -> int:
    """Progress units of the most work the audit may do, so the total never moves.

    Draws an undecided verdict may add (and the twins they train, ``training``) are counted from the
    start; what a verdict settled early leaves undone is skipped, so progress only goes forward.
    """
    per_method = sum(check_progress(check, check.max_draws()) for check in checks)
    return training + sum(1 + m.stochastic + per_method for m in methods)


def check_progress(check: SanityCheck, draws: int) -> int:
    return draws * check.stage_count() + check.reference_count(draws)
