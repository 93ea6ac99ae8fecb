"""Errors the engine raises when it refuses an audit.

Every refusal is an ``AuditInputError``: the caller's input (model, probes, settings) is the problem and
the message says what to change. The CLI prints it without a traceback; the service maps it to a 4xx.
"""


class AuditInputError(ValueError):
    """The audit cannot run on these inputs; ``str(error)`` tells the user why and what to do."""


class UnsafeArtifactError(AuditInputError):
    """The model file is of a kind the engine refuses to load (pickles, external data, unknown bytes)."""


class ModelConversionError(AuditInputError):
    """The model could not be rebuilt as a differentiable torch module, or the rebuild disagrees with it."""


class ProbeError(AuditInputError):
    """The probe images cannot be read or do not fit the model's input."""


class MethodUnsupportedError(AuditInputError):
    """A saliency method cannot give a correct map on this model (Guided Backprop without ReLU modules)."""


class AuditCancelled(Exception):
    """The caller asked to stop; raised between stages and between training epochs."""
