"""Load a model file as a differentiable torch module plus a reference run of the original artifact.

Every format goes through ONNX and our converter (``onnx_import``), so every audit sees the same kind of
module: real Conv/Linear layers and one ``nn.ReLU`` per Relu node, with forward hooks. TorchScript and
torch.export programs are lowered to ONNX in memory first; their reference is the program itself. The
format is read from the bytes, never the extension. Pickles (raw or inside a ``torch.save`` zip) are
refused: unpickling runs arbitrary code. TorchScript and .pt2 files are programs too (PyTorch's
SECURITY.md), so workers that load them must be isolated from secrets.
"""

import contextlib
import hashlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor
from torch._export.converter import TS2EPConverter
from torch.utils._pytree import tree_leaves

from workers.core.errors import AuditInputError, ModelConversionError
from workers.core.formats import (
    ArtifactFormat,
    format_label,
    parse_onnx,
    read_artifact,
    sniff_format,
)
from workers.core.report import ArtifactInfo
from workers.engine.onnx_import import OnnxGraphModule, onnx_to_torch

TORCHSCRIPT_ONNX_OPSET = 17
_BATCH_HINTS: dict[ArtifactFormat, str] = {
    "onnx": "from PyTorch, torch.onnx.export(..., dynamic_axes={'input': {0: 'batch'}}) (or dynamic_shapes "
    "with dynamo); from Keras/TensorFlow, tf2onnx with input_signature=[tf.TensorSpec((None, ...))]; from "
    "JAX/Flax, jax2onnx with a symbolic batch ('B', ...) in the input shapes; from PaddlePaddle, "
    "paddle.static.InputSpec(shape=[None, ...]) before paddle2onnx",
    "torch_export": "torch.export.export(model, (x,), dynamic_shapes={'x': {0: torch.export.Dim('batch')}})",
    "torchscript": "a TorchScript program whose graph does not fix the batch size",
}
# an ONNX file's producer_name -> the fix in that exporter's own terms
_PRODUCER_BATCH_HINTS = {
    "pytorch": "torch.onnx.export(..., dynamic_axes={'input': {0: 'batch'}}), or dynamic_shapes with dynamo",
    "tf2onnx": "tf2onnx.convert.from_keras(model, input_signature=[tf.TensorSpec((None, ...), tf.float32)])",
    "jax2onnx": "jax2onnx's to_onnx with a symbolic batch in the input shapes, e.g. ('B', 28, 28, 1)",
    "paddle": "paddle.onnx.export(..., input_spec=[paddle.static.InputSpec(shape=[None, ...])])",
}


@dataclass
class LoadedModel:
    module: OnnxGraphModule  # eval mode, float32, CPU, returns logits
    artifact: ArtifactInfo
    reference_runtime: str  # e.g. "onnxruntime 1.32.0 (CPUExecutionProvider)"
    reference: Callable[[np.ndarray], np.ndarray]  # the original artifact run by its own runtime
    notes: list[str] = field(default_factory=list)
    # The value of ``module`` that ``reference`` returns, when it is not ``module.output_name``: a
    # TorchScript or torch.export program ending in softmax exposes only the probabilities.
    reference_output: str | None = None


def detect_format(path: Path) -> ArtifactFormat:
    """The artifact's format, read from its bytes; refuses what the engine will not load."""
    return sniff_format(read_artifact(path), path.name)


def load_model(
    path: Path,
    example_input: np.ndarray | None = None,
    output: str | None = None,
    layout: str | None = None,
) -> LoadedModel:
    """Load ``path`` to audit its output ``output`` (name or position; default the first). TorchScript and
    torch.export files need ``example_input`` (a probe batch) to lower. ``layout`` ("NCHW" or "NHWC")
    states an ONNX model's input layout; None reads it from the graph."""
    data = read_artifact(path)
    kind = sniff_format(data, path.name)
    digest = hashlib.sha256(data).hexdigest()
    if kind == "onnx":
        return _load_onnx(data, path.name, digest, output, layout)
    if example_input is None:
        raise AuditInputError(
            f"{path.name} is a {format_label(kind)} program: it declares no input shape, so the engine needs "
            "probe images to lower it to ONNX; pass the probes along with the model"
        )
    example = torch.from_numpy(np.ascontiguousarray(example_input, dtype=np.float32))
    if layout == "NHWC":  # the program takes its own layout; the probes are [N, C, H, W]
        example = example.permute(0, 2, 3, 1).contiguous()
    loader = _load_torchscript if kind == "torchscript" else _load_torch_export
    return loader(data, path.name, digest, example, output, layout)


# --- recognizing the bytes ------------------------------------------------------------------------------


def _load_onnx(
    data: bytes, filename: str, digest: str, output: str | None, layout: str | None
) -> LoadedModel:
    model = parse_onnx(data, filename)
    module = _convert(model, filename, "onnx", output, layout)
    notes = _output_notes(module)
    original_opset = _opset(model)
    if module.opset != original_opset:
        notes.append(f"ONNX opset {original_opset} was converted to opset {module.opset} before the rebuild")
    _drop_final_softmax(module, notes)
    notes += _layout_notes(module)
    session = _onnxruntime_session(model, data, module.output_name, filename)
    input_name, output_name = module.source_input_name, module.output_name
    channels_last = module.input_layout == "NHWC"

    def reference(x: np.ndarray) -> np.ndarray:
        x = x.transpose(0, 2, 3, 1) if channels_last else x
        feed = {input_name: np.ascontiguousarray(x, dtype=np.float32)}
        return np.asarray(session.run([output_name], feed)[0], dtype=np.float32)

    return LoadedModel(
        module=module,
        artifact=ArtifactInfo(
            filename=filename,
            sha256=digest,
            format="onnx",
            opset=module.opset,
            input_layout=module.input_layout,
        ),
        reference_runtime=f"onnxruntime {ort.__version__} (CPUExecutionProvider)",
        reference=reference,
        notes=notes,
    )


def _opset(model: onnx.ModelProto) -> int | None:
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)


def _onnxruntime_session(
    model: onnx.ModelProto, data: bytes, output_name: str, filename: str
) -> ort.InferenceSession:
    """A CPU session that also exposes ``output_name`` (the logits under a dropped final softmax)."""
    if output_name not in {value.name for value in model.graph.output}:
        extended = onnx.ModelProto()
        extended.CopyFrom(model)
        extended.graph.output.append(
            onnx.helper.make_tensor_value_info(output_name, onnx.TensorProto.FLOAT, None)
        )
        data = extended.SerializeToString()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types, one per status code
        raise ModelConversionError(
            f"{filename}: onnxruntime cannot load the model, so its torch rebuild cannot be verified "
            f"({_first_line(error)})"
        ) from None


# --- TorchScript and torch.export ----------------------------------------------------------------


def _load_torchscript(
    data: bytes, filename: str, digest: str, example: Tensor, output: str | None, layout: str | None
) -> LoadedModel:
    """Through torch.export (as a .pt2 file goes), so both program formats give the same graph and layer
    names; programs the TorchScript converter cannot take go through the TorchScript ONNX exporter."""
    with _lowering(filename, "TorchScript"):
        program = torch.jit.load(io.BytesIO(data), map_location="cpu").eval()
        try:
            exported = TS2EPConverter(program, (example,)).convert()
            model = torch.onnx.export(exported, (example,), dynamo=True, verbose=False).model_proto
        except Exception:  # the converter covers most, not all, of TorchScript
            with _native_output_discarded():
                model = _torchscript_onnx_export(program, example)
    runtime = f"torch.jit {torch.__version__}"
    return _from_program(model, program, filename, digest, "torchscript", runtime, output, layout)


@contextlib.contextmanager
def _native_output_discarded() -> Iterator[None]:
    """The TorchScript ONNX exporter always enables its C++ log and prints the whole graph to the process's
    stdout when it fails; file descriptors 1 and 2 point to /dev/null meanwhile."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "wb") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            for fd, copy in zip((1, 2), saved, strict=True):
                os.dup2(copy, fd)
                os.close(copy)


def _torchscript_onnx_export(program: torch.jit.ScriptModule, example: Tensor) -> onnx.ModelProto:
    buffer = io.BytesIO()
    torch.onnx.export(
        program,
        (example,),
        buffer,
        dynamo=False,
        opset_version=TORCHSCRIPT_ONNX_OPSET,
        input_names=["input"],
        dynamic_axes={"input": {0: "batch"}},
    )
    return onnx.load_model_from_string(buffer.getvalue())


def _load_torch_export(
    data: bytes, filename: str, digest: str, example: Tensor, output: str | None, layout: str | None
) -> LoadedModel:
    with _lowering(filename, "torch.export"):
        exported = torch.export.load(io.BytesIO(data))
        model = torch.onnx.export(exported, (example,), dynamo=True, verbose=False).model_proto
        program = exported.module()
    runtime = f"torch.export {torch.__version__}"
    return _from_program(model, program, filename, digest, "torch_export", runtime, output, layout)


@contextlib.contextmanager
def _lowering(filename: str, kind: str) -> Iterator[None]:
    """Silence the exporters' progress prints and warnings; turn their failures into a refusal."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    except AuditInputError:
        raise
    except Exception as error:  # loaders and exporters raise anything from RuntimeError to their own types
        raise ModelConversionError(
            f"{filename}: this {kind} program could not be loaded and lowered to ONNX, which the engine "
            f"needs to rebuild it with hookable layers ({_first_line(error)}). Export it to ONNX yourself "
            "and upload that file"
        ) from None
    finally:
        logger.setLevel(level)


def _from_program(
    model: onnx.ModelProto,
    program: Callable[[Tensor], Any],
    filename: str,
    digest: str,
    kind: ArtifactFormat,
    runtime: str,
    output: str | None,
    layout: str | None,
) -> LoadedModel:
    module = _convert(model, filename, kind, output, layout)
    _name_layers_from_state(module, program)
    notes = [
        *_output_notes(module),
        f"{format_label(kind)} program lowered in memory to ONNX opset {module.opset} with torch.onnx and "
        "rebuilt with hookable layers; the rebuild is verified against the program itself",
        *_layout_notes(module),
    ]
    final = module.output_name
    reference_output = None
    if _drop_final_softmax(module, notes):
        reference_output = final
        notes.append("the conversion check compares softmax outputs: the program exposes no logits")
    return LoadedModel(
        module=module,
        artifact=ArtifactInfo(
            filename=filename,
            sha256=digest,
            format=kind,
            opset=module.opset,
            input_layout=module.input_layout,
        ),
        reference_runtime=runtime,
        reference=_program_reference(
            program, module.graph_outputs.index(module.selected_output), module.input_layout == "NHWC"
        ),
        notes=notes,
        reference_output=reference_output,
    )


def _name_layers_from_state(module: OnnxGraphModule, program: Callable[[Tensor], Any]) -> None:
    """Name layers whose lowering lost the name (a transposed weight folded into an anonymous constant) by
    the program's own parameter holding the same values, as such or transposed."""
    state = getattr(program, "state_dict", dict)()
    known = {name.rsplit(".", 1)[0] for name in state}
    for attr, name in module.layer_names.items():
        weight = getattr(module.get_submodule(attr), "weight", None)
        if name in known or not isinstance(weight, Tensor):
            continue
        for key, value in state.items():
            if not isinstance(value, Tensor) or not value.is_floating_point():
                continue
            candidates = (value, value.T) if value.dim() == 2 else (value,)
            if any(c.shape == weight.shape and torch.equal(c.to(weight.dtype), weight) for c in candidates):
                module.layer_names[attr] = key.removesuffix(".weight")
                break


def _program_reference(
    program: Callable[[Tensor], Any], position: int, channels_last: bool
) -> Callable[[np.ndarray], np.ndarray]:
    """The program's output at ``position`` among its tensors, in the order ONNX lists the outputs, fed
    [N, C, H, W] probes in its own layout."""

    def reference(x: np.ndarray) -> np.ndarray:
        x = x.transpose(0, 2, 3, 1) if channels_last else x
        with torch.no_grad():
            outputs = tree_leaves(program(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))))
        out = outputs[position] if position < len(outputs) else None
        if not isinstance(out, Tensor):
            raise ModelConversionError(f"the program returns {type(out).__name__}, not a tensor of logits")
        return out.detach().float().numpy()

    return reference


# --- shared ---------------------------------------------------------------------------------------


def _convert(
    model: onnx.ModelProto,
    filename: str,
    kind: ArtifactFormat,
    output: str | None,
    layout: str | None = None,
) -> OnnxGraphModule:
    try:
        module = onnx_to_torch(model, layout)
        module.select_output(output)
    except ModelConversionError as error:
        raise ModelConversionError(f"{filename}: {error}") from None
    except ValueError as error:
        raise AuditInputError(f"{filename}: {error}") from None

    shape = module.input_shape
    if not shape or shape[0] is not None:
        shown = "[" + ", ".join("dynamic" if d is None else str(d) for d in shape) + "]"
        raise AuditInputError(
            f"{filename}: input {module.input_name!r} has shape {shown} with a fixed batch size; the audit "
            "runs batches of any size (Integrated Gradients, SmoothGrad), so the model must be exported "
            f"with a dynamic batch dimension: {_batch_hint(model, kind)}"
        )
    return module


def _batch_hint(model: onnx.ModelProto, kind: ArtifactFormat) -> str:
    producer = model.producer_name.lower()
    if kind == "onnx":
        for name, hint in _PRODUCER_BATCH_HINTS.items():
            if name in producer:
                return hint
    return _BATCH_HINTS[kind]


def _output_notes(module: OnnxGraphModule) -> list[str]:
    outputs = module.graph_outputs
    if len(outputs) == 1:
        return []
    return [f"the model has {len(outputs)} outputs; the audit explains {module.selected_output!r}"]


def _drop_final_softmax(module: OnnxGraphModule, notes: list[str]) -> bool:
    """Maps explain logits: a final Softmax/LogSoftmax would squash the gradients of confident classes."""
    logits = module.pre_softmax_output()
    if logits is None:
        return False
    module.output_name = logits
    notes.append(f"final Softmax dropped: maps explain the logits ({logits!r}), not the probabilities")
    return True


def _layout_notes(module: OnnxGraphModule) -> list[str]:
    if module.input_layout != "NHWC":
        return []
    return [
        f"the model takes channels-last input {_shape_text(module.input_shape, 'NHWC')}: probe arrays are "
        "read as [N, H, W, C] unless their layout is given; maps are computed, compared and archived as "
        "[N, C, H, W]"
    ]


def _shape_text(shape: tuple[int | None, ...], axes: str) -> str:
    """[N, C, H, W] sizes shown in the file's own axis order ``axes``."""
    sizes = dict(zip("NCHW", shape, strict=True))
    return "[" + ", ".join(axis if sizes[axis] is None else str(sizes[axis]) for axis in axes) + "]"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
