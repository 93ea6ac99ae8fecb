"""Which nonlinearities lie between a converted graph's input and its output.

Guided Backprop is defined for networks whose every nonlinearity is a ReLU (captum overrides ``nn.ReLU``
modules, one per Relu node here). Anything else keeps its plain gradient and the map silently stops being
Guided Backprop. Exporters spell the common activations as chains (SiLU is Sigmoid x Mul, GELU an Erf
chain, HardSwish Add/Clip/Div), so the guard reads every node on the data path: an op is accepted only
when it is linear in its data inputs, a ReLU, or a max-selection (max pooling routes the gradient to the
maximum, as the paper's networks do); everything else is named.
"""

from collections import Counter

from workers.engine.onnx_import.graph import OnnxGraphModule, Step

_LINEAR = frozenset(
    {
        "Conv", "ConvTranspose", "Gemm", "BatchNormalization", "Add", "Sub", "Neg", "Sum", "Reshape",
        "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice", "Gather",
        "GatherElements", "GatherND", "Expand", "Tile", "Pad", "Identity", "Dropout", "Cast", "CastLike",
        "AveragePool", "GlobalAveragePool", "ReduceMean", "ReduceSum", "LearnedTensor",
    }
)  # fmt: skip
_SELECTIONS = frozenset({"MaxPool", "GlobalMaxPool", "ReduceMax"})
_SHAPE_ONLY = frozenset({"Shape", "Size"})  # read the input's shape, not its values
_ACCEPTED = _LINEAR | _SELECTIONS | _SHAPE_ONLY
_PRODUCTS = frozenset({"Mul", "MatMul"})  # linear when at most one factor carries data

_LABELS = {
    "Sigmoid": "Sigmoid",
    "HardSigmoid": "HardSigmoid",
    "Tanh": "Tanh",
    "Erf": "Erf (GELU)",
    "Gelu": "GELU",
    "HardSwish": "HardSwish",
    "Clip": "Clip (ReLU6, hard activations)",
    "LeakyRelu": "LeakyReLU",
    "PRelu": "PReLU",
    "Elu": "ELU",
    "Selu": "SELU",
    "Celu": "CELU",
    "Softplus": "Softplus",
    "Mish": "Mish",
    "Softmax": "Softmax (attention or gating)",
    "LayerNormalization": "LayerNormalization (divides by a data-dependent spread)",
    "GroupNormalization": "GroupNormalization (divides by a data-dependent spread)",
    "InstanceNormalization": "InstanceNormalization (divides by a data-dependent spread)",
}


def non_relu_nonlinearities(module: OnnxGraphModule) -> Counter[str]:
    """Nonlinear operations on the data path to the output other than ReLUs and max-selections, by label."""
    data = module.data_values()
    producers = module.producers()
    found: Counter[str] = Counter()
    for step in module.steps_to_output():
        carried = [name for name in step.inputs if name in data]
        if not carried or step.op_type in _ACCEPTED:
            continue
        if step.op_type == "Relu" and step.module is not None:
            continue
        label = _label(step, carried, producers)
        if label is not None:
            found[label] += 1
    return found


def _gate(producers: dict[str, Step], value: str) -> str:
    """The op that makes a product's factor, looking through scalings (``relu6(x + 3) / 6``)."""
    step = producers.get(value)
    while step is not None and step.op_type in ("Mul", "Div") and len(step.inputs) == 2:
        carried = [name for name in step.inputs if name in producers]
        if len(carried) != 1:
            break
        step = producers[carried[0]]
    return step.op_type if step is not None else ""


def _label(step: Step, carried: list[str], producers: dict[str, Step]) -> str | None:
    """How to name ``step`` when it is nonlinear in its data inputs, or None when it is linear."""
    op = step.op_type
    if op in _PRODUCTS:
        if len(carried) < 2:
            return None
        gates = {_gate(producers, name) for name in carried}
        if "Sigmoid" in gates:
            return "SiLU/Swish or sigmoid gating (Sigmoid x Mul)"
        if "HardSigmoid" in gates:
            return "HardSwish or hard-sigmoid gating (HardSigmoid x Mul)"
        if "Clip" in gates:
            return "HardSwish or hard gating spelled out (x x Clip(x + 3) / 6)"
        return "product of two activations (attention, gating, squeeze-excitation)"
    if op == "Div":
        return None if len(step.inputs) > 1 and step.inputs[1] not in carried else "division by an activation"
    if op == "Where":
        return None if step.inputs[0] not in carried else "data-dependent selection (Where)"
    return _LABELS.get(op, op)
