"""The sanity checks behind one interface; importing this package registers every built-in check."""

from workers.engine.checks import data_randomization, invariance, logit, mprt, parameters
from workers.engine.checks.base import CheckContext, RetrainFloor, SanityCheck, StageValues, create_check

__all__ = [
    "CheckContext",
    "RetrainFloor",
    "SanityCheck",
    "StageValues",
    "create_check",
    "data_randomization",
    "invariance",
    "logit",
    "mprt",
    "parameters",
]
