"""Which axis of each 4-D value is the channel axis, read from the graph's ops, never guessed from sizes.

GradCAM and the figures need feature maps as [N, C, H, W]. Exporters from channels-last frameworks
(tf2onnx, jax2onnx) move axes with Transpose nodes, and many graphs end the feature extractor with a
Transpose to [N, H, W, C] or a Reshape, so "a 4-D value" says nothing about what its axes are. A value's
layout is known when an op whose ONNX definition fixes [N, C, H, W] produced it (Conv, pooling,
BatchNormalization...), or when it comes from values of known layout through an op that keeps the axes
(elementwise ops, normalizations, Pad, Slice, Concat, reductions that keep their dims, a MatMul on a
channels-last value's channel axis as ConvNeXt's blocks do) or permutes them (Transpose). Reshape,
Flatten and every other op end the knowledge: their 4-D outputs have no layout, and nothing reads them
as feature maps.
"""

from workers.engine.onnx_import.graph import OnnxGraphModule, Shape, Step

CHANNELS_FIRST = "NCHW"

_CHANNELS_FIRST_OPS = frozenset(
    {
        "Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool",
        "GlobalLpPool", "BatchNormalization", "InstanceNormalization", "LRN", "DepthToSpace", "SpaceToDepth",
    }
)  # fmt: skip
_AXES_KEPT = frozenset(
    {
        "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "ThresholdedRelu", "Sigmoid", "HardSigmoid",
        "HardSwish", "Tanh", "Softplus", "Softsign", "Mish", "Gelu", "Erf", "Clip", "Identity", "Cast",
        "CastLike", "Dropout", "Neg", "Abs", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round",
        "Sign", "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Pad", "Slice",
        "Split", "Concat", "Resize", "Upsample", "LayerNormalization", "GroupNormalization", "Softmax",
    }
)  # fmt: skip
_REDUCTIONS = frozenset({"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL2", "ReduceProd"})
# ops that keep the axes while changing sizes along them
_RESIZING = frozenset({"Pad", "Slice", "Split", "Concat", "Resize", "Upsample", *_REDUCTIONS})


def value_layouts(module: OnnxGraphModule, shapes: dict[str, tuple[int, ...]]) -> dict[str, str]:
    """The layout of every 4-D data value whose axes the graph makes known, as a permutation of "NCHW"
    ("NHWC": channels last). ``shapes`` gives each value's shape (from one forward pass)."""
    data = module.data_values()
    layouts: dict[str, str] = {}
    reshaped: dict[str, str] = {}  # a value reshaped from one of known layout -> that value
    if len(shapes.get(module.input_name, ())) == 4:
        layouts[module.input_name] = CHANNELS_FIRST
    for step in module.steps:
        carried = [name for name in step.inputs if name in data]
        layout = _output_layout(step, carried, layouts, shapes) if carried else None
        origin = _round_trip(step, carried, layouts, reshaped, shapes)
        if layout is None and origin in layouts and shapes.get(step.outputs[0]) == shapes.get(origin):
            layout = layouts[origin]  # reshaped back to where it came from (GroupNorm as torch exports it)
        elif origin is not None:
            reshaped[step.outputs[0]] = origin
        for name in step.outputs:
            if layout is not None and len(shapes.get(name, ())) == 4:
                layouts[name] = layout
    return layouts


def _round_trip(
    step: Step,
    carried: list[str],
    layouts: dict[str, str],
    reshaped: dict[str, str],
    shapes: dict[str, tuple[int, ...]],
) -> str | None:
    """The value of known layout that ``step``'s output is a reshape of, with every element where the
    reshape put it: a Reshape of it, then ops that keep each element in place (same shape in and out)."""
    if len(carried) != 1:
        return None
    source = carried[0]
    if step.op_type in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
        return source if source in layouts else reshaped.get(source)
    keeps_places = step.op_type in _AXES_KEPT or step.op_type == "InstanceNormalization"
    if keeps_places and source in reshaped and shapes.get(step.outputs[0]) == shapes.get(source):
        return reshaped[source]
    return None


def _output_layout(
    step: Step, carried: list[str], layouts: dict[str, str], shapes: dict[str, tuple[int, ...]]
) -> str | None:
    op, first = step.op_type, layouts.get(carried[0])
    if op in _CHANNELS_FIRST_OPS:
        return CHANNELS_FIRST
    if op == "Transpose":
        perm = step.attrs.get("perm")
        return "".join(first[axis] for axis in perm) if first is not None and perm is not None else None
    if op == "MatMul":  # a linear layer on the last axis keeps the roles when that axis is the channels
        return (
            first
            if len(carried) == 1 and step.inputs[0] == carried[0] and first and first[-1] == "C"
            else None
        )
    if op in _REDUCTIONS and not step.attrs.get("keepdims", 1):
        return None
    if op not in _AXES_KEPT and op not in _REDUCTIONS:
        return None
    # elementwise ops broadcast: the output's axes are those of an input of known layout and of the
    # output's own shape (a value of unknown layout broadcast against it takes those axes)
    shape = shapes.get(step.outputs[0])
    known = {layouts[name] for name in carried if name in layouts}
    same_shape = any(name in layouts and shapes.get(name) == shape for name in carried)
    return known.pop() if len(known) == 1 and (same_shape or op in _RESIZING) else None


def channels_first_order(layout: str) -> tuple[int, ...]:
    """The permutation that turns a value of ``layout`` into [N, C, H, W]."""
    return tuple(layout.index(axis) for axis in CHANNELS_FIRST)


_PASSED_ON = frozenset({"Sub", "Div", "Mul", "Add", "Cast", "Identity", "Clip", "Pad"})  # input scaling
_SMALL_CHANNELS = (1, 3, 4)


def source_input_layout(module: OnnxGraphModule, shapes: dict[str, Shape]) -> str:
    """Whether the graph's 4-D input is "NCHW" or channels-last "NHWC", read from what the graph first does
    with it: Keras and Flax exports move it to channels-first with a Transpose (perm 0, 3, 1, 2), or, for
    one channel, a Reshape of [N, H, W, 1] to [N, 1, H, W]; a Conv or pooling reading it (after any input
    scaling) says channels-first. With neither, an input whose last axis is 1, 3 or 4 and whose second is
    above 4 (no image has that many channels) is taken as channels-last."""
    shape = module.input_shape
    if len(shape) != 4:
        return CHANNELS_FIRST
    readers: dict[str, list[Step]] = {}
    for step in module.steps:
        for name in step.inputs:
            readers.setdefault(name, []).append(step)
    votes: set[str] = set()
    frontier = [module.input_name]
    while frontier:
        for step in readers.get(frontier.pop(), []):
            if _moves_channels_first(step, shape, shapes):
                votes.add("NHWC")
            elif step.op_type in _CHANNELS_FIRST_OPS:
                votes.add(CHANNELS_FIRST)
            elif step.op_type in _PASSED_ON:
                frontier.append(step.outputs[0])
    if len(votes) == 1:
        return votes.pop()
    channels_last = shape[3] in _SMALL_CHANNELS and shape[1] is not None and shape[1] > max(_SMALL_CHANNELS)
    return "NHWC" if not votes and channels_last else CHANNELS_FIRST


def _moves_channels_first(step: Step, shape: Shape, shapes: dict[str, Shape]) -> bool:
    if step.op_type == "Transpose":
        return list(step.attrs.get("perm", [])) == [0, 3, 1, 2]
    reshaped = shapes.get(step.outputs[0])
    return (
        step.op_type == "Reshape"
        and shape[3] == 1
        and reshaped is not None
        and len(reshaped) == 4
        and reshaped[1] == 1
        and reshaped[2:] == shape[1:3]
        and None not in shape[1:3]
    )
