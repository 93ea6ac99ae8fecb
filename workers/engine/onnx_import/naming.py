"""The names a file gives its source model's modules, so layers and GradCAM targets carry them.

Each exporter writes them its own way:
- torch's dynamo exporter: module paths in the ``pkg.torch.onnx.name_scopes`` metadata of each node;
  the TorchScript-based one: node names such as ``/layer1/layer1.0/conv1/Conv``; weights named
  ``layer1.0.conv1.weight``.
- tf2onnx (Keras): TensorFlow scopes in node and weight names, ``<model>/<layer>/<op>...``, e.g.
  ``cnn_1/conv2d_2_1/BiasAdd`` for Keras layer ``conv2d_2``, possibly under wrappers
  (``StatefulPartitionedCall/``) and nested models (``model/mobilenetv2_1.00_224/Conv1/convolution``). The
  layer is the deepest scope above the op that is not one of TensorFlow's own op scopes (``batchnorm``,
  ``convolution``...). Keras 3 traces the model in a graph where its scopes were entered before, so
  TensorFlow makes every scope unique with a suffix (``conv2d_1`` for ``conv2d``, ``conv_1_2`` for
  ``conv_1``): when every layer scope ends in ``_<n>`` and removing it keeps them apart, it is removed.
  New nodes of tf2onnx's optimizer (``Conv__308``) keep no scope, so a layer is named by its weight's
  scope first.
- paddle2onnx: parameter names ``conv2d_0.w_0`` (layer ``conv2d_0``); values named ``p2o.*``.
- jax2onnx: no module paths (``node_Conv_1``); the node names are all there is.
"""

import ast
import re
from collections import Counter

import onnx
from onnx import NodeProto

_TRACE_SUFFIX = re.compile(r"_\d+$")
_PADDLE_PARAMETER = re.compile(r"\.[wb]_\d+$")


# scopes TensorFlow opens inside a Keras layer for its own ops, and wrappers around the whole model
_TF_OP_SCOPES = frozenset(
    {
        "batchnorm", "convolution", "depthwise", "Cast", "BiasAdd", "MatMul", "Tensordot", "ReadVariableOp",
        "FusedBatchNormV3", "Conv2D", "BatchMatMulV2", "Reshape", "Shape", "strided_slice", "transpose",
    }
)  # fmt: skip
_TF_WRAPPERS = frozenset({"StatefulPartitionedCall", "PartitionedCall", "ConstantFolding"})


class Naming:
    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        names = [node.name for node in graph.node] + [tensor.name for tensor in graph.initializer]
        values = [name for node in graph.node for name in node.output]
        self.tensorflow = "tf2onnx" in model.producer_name.lower()
        self.paddle = "paddle" in model.producer_name.lower() or any(v.startswith("p2o.") for v in values)
        scoped = [self._scopes(name) for name in names if "/" in name and not name.startswith("/")]
        scoped = [parts for parts in scoped if parts]
        self._root = Counter(parts[0] for parts in scoped).most_common(1)[0][0] if scoped else ""
        layers = {parts[-1] for parts in scoped if len(parts) > 1}
        stripped = {_TRACE_SUFFIX.sub("", layer) for layer in layers}
        suffixed = bool(layers) and all(_TRACE_SUFFIX.search(layer) for layer in layers)
        self._strip_trace_suffix = suffixed and len(stripped) == len(layers)

    def scope(self, node: NodeProto) -> str:
        """The module or layer of the source model a node was exported from, or "" where the file does not
        say: a torch module path such as ``layer1.0.conv1``, or a Keras layer name."""
        if self.tensorflow:
            return self._keras_layer(node.name)
        return _torch_scope(node)

    def layer(self, node: NodeProto, weight_name: str | None, index: int) -> str:
        """The name the artifact gave a layer: ``conv_1.weight`` -> ``conv_1``, ``attn.in_proj_weight`` as
        is, a node exported from module ``features.0`` -> ``features.0``, Keras's ``conv2d_1``, Paddle's
        ``conv2d_0.w_0`` -> ``conv2d_0``."""
        if self.tensorflow:
            keras = self._keras_layer(weight_name or "") or self._keras_layer(node.name)
            return keras or node.name or f"{node.op_type.lower()}_{index}"
        if weight_name and "." in weight_name and not weight_name.startswith("onnx::"):
            name = weight_name.removesuffix(".weight")
            return _PADDLE_PARAMETER.sub("", name) if self.paddle else name
        return _torch_scope(node) or node.name or weight_name or f"{node.op_type.lower()}_{index}"

    @staticmethod
    def _scopes(name: str) -> list[str]:
        """The scopes above the op in a TensorFlow name, wrappers and TensorFlow's own op scopes left out."""
        parts = name.split("/")[:-1]
        while parts and parts[0] in _TF_WRAPPERS:
            parts = parts[1:]
        while parts and parts[-1] in _TF_OP_SCOPES:
            parts = parts[:-1]
        return parts

    def _keras_layer(self, name: str) -> str:
        parts = self._scopes(name)
        if len(parts) < 2 and (not parts or parts[0] == self._root):
            return ""
        layer = parts[-1]
        return _TRACE_SUFFIX.sub("", layer) if self._strip_trace_suffix else layer


def _torch_scope(node: NodeProto) -> str:
    """torch's dynamo exporter records the module paths in the ``pkg.torch.onnx.name_scopes`` metadata (the
    module paths, then the op); the TorchScript-based exporter in node names such as
    ``/layer1/layer1.0/conv1/Conv``, where a part is a child's name, or a container's child shown under the
    container's own name (``layer1.0`` is child ``0`` of ``layer1``)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = [scope for scope in ast.literal_eval(prop.value) if scope]
            return scopes[-2] if len(scopes) >= 2 else ""
    if not node.name.startswith("/"):
        return ""
    components: list[str] = []
    for part in [part for part in node.name.split("/") if part][:-1]:
        if components and part.startswith(f"{components[-1]}."):
            components[-1] = part
        else:
            components.append(part)
    return ".".join(components)
