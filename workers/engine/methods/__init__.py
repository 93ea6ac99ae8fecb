"""Saliency methods behind one interface; importing this package registers every built-in method."""

from workers.engine.methods import edges, gradcam, gradients, guided_backprop
from workers.engine.methods.base import (
    MethodContext,
    SaliencyMethod,
    available_methods,
    create_method,
    method_class,
)

__all__ = [
    "MethodContext",
    "SaliencyMethod",
    "available_methods",
    "create_method",
    "edges",
    "gradcam",
    "gradients",
    "guided_backprop",
    "method_class",
]
