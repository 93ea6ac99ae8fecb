"""Our own ONNX -> torch converter: the graph becomes a module whose layers are real torch modules.

Why not onnx2torch or onnx2pytorch: both pull in torchvision (a CUDA torch on CPU machines) and miss
Reshape-19 ``allowzero``. Saliency audits need more than an interpreter anyway: weights must be
``nn.Parameter`` of ``nn.Conv2d``/``nn.Linear``/... modules (the randomization tests re-initialize them),
learned tensors outside layers (a class token, a position embedding, a layer scale) must be parameters
too, and every Relu node must be its own ``nn.ReLU`` (captum's Guided Backprop overrides only those).
Everything else runs as parameter-free torch functions, so gradients flow to the input.

Layout: ``prepare`` reads and checks the file, ``builder`` turns nodes into steps of a ``graph``
module, and ``ops`` holds one module per op family, where a reader looks for an op.
"""

import onnx

from workers.core.errors import ModelConversionError
from workers.engine.onnx_import.builder import Builder
from workers.engine.onnx_import.graph import OnnxGraphModule
from workers.engine.onnx_import.layouts import source_input_layout
from workers.engine.onnx_import.ops import FUNCTION_BUILDERS, MODULE_BUILDERS, SUPPORTED_OPS
from workers.engine.onnx_import.prepare import input_spec, prepared, refuse_unsupported

__all__ = ["SUPPORTED_OPS", "OnnxGraphModule", "onnx_to_torch"]


def onnx_to_torch(model: onnx.ModelProto, layout: str | None = None) -> OnnxGraphModule:
    """Convert a single-input float32 ONNX classifier; raises ModelConversionError on what it cannot.
    A channels-last classifier ("NHWC": stated, or read from the graph when ``layout`` is None) comes
    back taking [N, C, H, W] like every other."""
    model = prepared(model)
    graph = model.graph
    refuse_unsupported(graph, SUPPORTED_OPS)
    builder = Builder(model, input_spec(graph), MODULE_BUILDERS, FUNCTION_BUILDERS)
    for index, node in enumerate(graph.node):
        builder.add(node, index)
    module = builder.finish()
    if layout is not None and layout != "NCHW" and len(module.input_shape) != 4:
        raise ModelConversionError(
            f"model layout {layout} was given, but the input {module.input_name!r} has "
            f"{len(module.input_shape)} axes, not 4"
        )
    if (layout or source_input_layout(module, builder.shapes)) == "NHWC":
        module.take_channels_first_input()
    return module
