"""Which value of the graph GradCAM reads, and how it becomes a spatial grid.

The conventional layer is the output of the last spatial block (torchvision ResNet: ``layer4[-1]``,
after the residual Add and its ReLU), not the last Conv2d in forward order, which in a residual block is
the branch convolution before the Add, or a downsampling shortcut. So the default is the last value on
the path to the output that is still a feature map [N, C, H, W] with more than one position, read
before any pooling that ends the feature extractor (VGG's last max pool), at the last conv block's
resolution. A transformer's blocks output tokens: when its last residual stream [N, T, D] comes after the
last feature map (the patch embedding), it is read, reshaped to the patch grid with the class token
dropped, when the grid follows from the input size; a model with neither is refused.

Only values whose axes the graph makes known (``onnx_import.layouts``) count as feature maps: a value that
merely has four axes may be channels-last (tf2onnx and jax2onnx end the feature extractor with a Transpose
to [N, H, W, C]) or a reshape. Values made by ops that only move, pad or cut another value (Transpose, Pad,
Slice, Identity...) are never the default: the value they read is the block's output.
"""

import math
from dataclasses import dataclass

from torch import Tensor

from workers.core.errors import MethodUnsupportedError
from workers.engine.layers import has_own_parameters
from workers.engine.onnx_import import OnnxGraphModule
from workers.engine.onnx_import.graph import Step
from workers.engine.onnx_import.layouts import CHANNELS_FIRST, channels_first_order, value_layouts

# ops whose output only moves, pads, cuts or copies another value: never a block's output
_NOT_BLOCK_OUTPUTS = frozenset(
    {"Transpose", "Pad", "Slice", "Split", "Identity", "Cast", "CastLike", "Dropout", "Resize", "Upsample"}
)


@dataclass(frozen=True)
class GradCamTarget:
    value: str  # the graph value read
    label: str  # how the report names it
    reason: str  # why this one
    grid: tuple[int, int] | None = None  # patch grid of a token sequence; None for a feature map
    class_tokens: int = 0  # leading tokens dropped before the reshape
    layout: str | None = CHANNELS_FIRST  # a feature map's axes ("NHWC": channels last); None for tokens

    @property
    def is_feature_map(self) -> bool:
        """Whether the value read is known to be [N, C, H, W] once permuted, or a patch grid of tokens."""
        return self.grid is not None or (self.layout is not None and sorted(self.layout) == sorted("NCHW"))


def as_feature_map(target: GradCamTarget, value: Tensor) -> Tensor:
    """A feature map permuted to [N, C, H, W]; tokens [N, T, D] -> [N, D, grid_h, grid_w]."""
    if target.grid is None:
        return value.permute(channels_first_order(target.layout or CHANNELS_FIRST))
    tokens = value[:, target.class_tokens :, :]
    return tokens.transpose(1, 2).reshape(value.shape[0], value.shape[2], *target.grid)


def choose_target(model: OnnxGraphModule, example: Tensor, requested: str | None) -> GradCamTarget | None:
    """The requested value (a module of the source model, a layer, a node or a value name), else the
    default; None when the model has nothing GradCAM can read."""
    shapes = model.value_shapes(example)
    layouts = value_layouts(model, shapes)
    steps = model.steps_to_output()
    data = model.data_values()
    order = [name for step in steps for name in step.outputs if name in shapes and name in data]
    producers = model.producers()
    size = tuple(example.shape[2:])
    if requested is not None:
        value, label = _requested_value(model, requested, steps, set(order), producers)
        reason = f"chosen with gradcam_layer={requested!r}"
        target = _readable(value, label, reason, shapes[value], size, layouts.get(value))
        if target is None:
            unknown = (
                f", made by {_made_by(producers, value)}, whose axes the graph does not make known"
                if len(shapes[value]) == 4
                else ""
            )
            raise MethodUnsupportedError(
                f"gradcam: gradcam_layer {requested!r} outputs {list(shapes[value])}{unknown}: GradCAM needs "
                "a feature map [N, C, H, W] (as a Conv, pooling or normalization leaves it, or a Transpose "
                "of one) or a token sequence [N, T, D] whose tokens tile the input as a patch grid"
            )
        return target
    maps = [
        name
        for name in order
        if name in layouts
        and producers[name].op_type not in _NOT_BLOCK_OUTPUTS
        and _positions(shapes[name], layouts[name]) > 1
    ]
    while maps and _pooled(producers, maps[-1]) in maps:  # read before a trailing pooling, at full detail
        maps = maps[: maps.index(_pooled(producers, maps[-1])) + 1]
    last_map = maps[-1] if maps else None
    reason = "the last feature map (the last block's output)"
    if last_map is not None and _convolved_to_one_position(order, last_map, shapes, layouts, producers):
        block = _last_residual_output(maps, last_map, shapes, layouts, producers)
        if block is not None:
            last_map = block
            reason = "the last residual block's output with more than one position (the input is so small "
            reason += "that the last stage's maps are 1x1)"
    for name in reversed(order):
        if name == last_map:
            return GradCamTarget(name, _label(model, producers, name), reason, layout=layouts[name])
        if producers[name].op_type == "Add" and len(shapes[name]) == 3:
            stream = _readable(
                name, _label(model, producers, name), "the last residual stream", shapes[name], size, None
            )
            if stream is not None:
                return stream
    return None


def _convolved_to_one_position(
    order: list[str],
    last_map: str,
    shapes: dict[str, tuple[int, ...]],
    layouts: dict[str, str],
    producers: dict[str, Step],
) -> bool:
    """Whether convolutions go on after ``last_map`` on maps of one position: the last stage of a net
    made for larger inputs, whose block ``last_map`` sits inside (e.g. MobileNetV2 at 32 x 32)."""
    later = order[order.index(last_map) + 1 :]
    return any(
        producers[name].op_type == "Conv" and name in layouts and _positions(shapes[name], layouts[name]) == 1
        for name in later
    )


def _last_residual_output(
    maps: list[str],
    last_map: str,
    shapes: dict[str, tuple[int, ...]],
    layouts: dict[str, str],
    producers: dict[str, Step],
) -> str | None:
    """At ``last_map``'s resolution, the last residual sum (or the activation reading only it)."""
    size = _positions(shapes[last_map], layouts[last_map])
    same = [name for name in maps if _positions(shapes[name], layouts[name]) == size]
    sums = [name for name in same if producers[name].op_type in ("Add", "Sum")]
    if not sums:
        return None
    after = [name for name in same if producers[name].inputs and producers[name].inputs[0] == sums[-1]]
    activated = [name for name in after if producers[name].op_type in ("Relu", "Clip")]
    return activated[0] if activated else sums[-1]


def _positions(shape: tuple[int, ...], layout: str) -> int:
    return shape[layout.index("H")] * shape[layout.index("W")]


def _made_by(producers: dict[str, Step], value: str) -> str:
    step = producers.get(value)
    return f"a {step.op_type} node" if step is not None else "the graph input"


def _readable(
    value: str, label: str, reason: str, shape: tuple[int, ...], size: tuple[int, ...], layout: str | None
) -> GradCamTarget | None:
    if len(shape) == 4:
        return GradCamTarget(value, label, reason, layout=layout) if layout is not None else None
    if len(shape) != 3 or len(size) != 2:
        return None
    for class_tokens in (1, 0):
        grid = _patch_grid(shape[1] - class_tokens, size)
        if grid is not None:
            tokens = f"{class_tokens} class token dropped, " if class_tokens else ""
            return GradCamTarget(
                value, label, f"{reason} ({tokens}{grid[0]}x{grid[1]} patches)", grid, class_tokens, None
            )
    return None


def _patch_grid(tokens: int, size: tuple[int, ...]) -> tuple[int, int] | None:
    """The grid of square patches of one size that tile an H x W input into ``tokens`` patches."""
    height, width = size
    if tokens < 1 or (height * width) % tokens:
        return None
    patch = math.isqrt(height * width // tokens)
    if patch * patch * tokens != height * width or height % patch or width % patch:
        return None
    return height // patch, width // patch


def _pooled(producers: dict[str, Step], value: str) -> str | None:
    """The input of the pooling that produced ``value``, or None when ``value`` is not pooled."""
    step = producers[value]
    return step.inputs[0] if step.op_type in ("MaxPool", "AveragePool") else None


def _label(model: OnnxGraphModule, producers: dict[str, Step], value: str) -> str:
    """The source model's name for the value; where the file names no module (paddle2onnx, jax2onnx), the
    ONNX name and the last layer with parameters before it, which a reader can find in the layer list."""
    step = producers[value]
    where = model.layer_names.get(step.module or "", "") or step.scope
    if where and (step.scope or _has_parameters(model, step)):
        return f"{where} ({step.op_type} output)"
    before = [s for s in model.steps[: model.steps.index(step)] if s.module and _has_parameters(model, s)]
    after = f", after layer {model.layer_names.get(before[-1].module, before[-1].module)}" if before else ""
    return f"{where or value} ({step.op_type} output{after})"


def _has_parameters(model: OnnxGraphModule, step: Step) -> bool:
    return step.module is not None and has_own_parameters(model.get_submodule(step.module))


def _requested_value(
    model: OnnxGraphModule, requested: str, steps: list[Step], readable: set[str], producers: dict[str, Step]
) -> tuple[str, str]:
    """A value by its own name, its node's name, its layer's name or module attribute, or the source
    model's module path (the last value computed inside that module)."""
    for step in reversed(steps):
        names = {step.name, *step.outputs, step.module, model.layer_names.get(step.module or "")}
        if requested in names and step.outputs[0] in readable:
            return step.outputs[0], _label(model, producers, step.outputs[0])
    inside = [
        step.outputs[0]
        for step in steps
        if (step.scope == requested or step.scope.startswith(f"{requested}.")) and step.outputs[0] in readable
    ]
    if inside:
        return inside[-1], f"{requested} (module output)"
    modules = sorted({step.scope for step in model.steps if step.scope})
    shown = ", ".join(modules[:40]) or "the file names no modules"
    raise MethodUnsupportedError(
        f"gradcam: gradcam_layer {requested!r} is not a module, layer or value of the model ({shown})"
    )
