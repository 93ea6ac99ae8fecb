"""One module per op family; each lists the ONNX ops it rebuilds as torch modules or as functions."""

from workers.engine.onnx_import.builder import FunctionBuilder, ModuleBuilder
from workers.engine.onnx_import.ops import (
    activations,
    conv,
    elementwise,
    linear,
    normalization,
    pooling,
    tensors,
)

MODULE_BUILDERS: dict[str, ModuleBuilder] = {
    **conv.MODULES,
    **linear.MODULES,
    **normalization.MODULES,
    **activations.MODULES,
}
FUNCTION_BUILDERS: dict[str, FunctionBuilder] = {
    **activations.FUNCTIONS,
    **elementwise.FUNCTIONS,
    **pooling.FUNCTIONS,
    **tensors.FUNCTIONS,
}
SUPPORTED_OPS: frozenset[str] = frozenset({"Constant", *MODULE_BUILDERS, *FUNCTION_BUILDERS})
