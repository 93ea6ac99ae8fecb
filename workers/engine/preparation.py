"""What an audit and each of its units prepare before any map: the model and probes loaded, the device,
the classes explained, the methods, the stage blocks. The audit's own process and a worker running some of
its units prepare the same way, so both compute the same maps.
"""

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from workers.core.audit_settings import METHOD_NAMES, AuditSettings, Layout, TargetPolicy
from workers.core.errors import AuditInputError, MethodUnsupportedError
from workers.core.probes import ProbeSet, check_label_range, load_probes
from workers.core.report import SkippedMethod
from workers.engine.artifacts import LoadedModel, detect_format, load_model
from workers.engine.blocks import Block, stage_blocks
from workers.engine.budget import MemoryPlan, plan_memory
from workers.engine.layers import Layer, layers_in_forward_order
from workers.engine.methods import MethodContext, SaliencyMethod, create_method, method_class
from workers.engine.methods.gradcam_target import choose_target
from workers.engine.passes import counting, new_counter
from workers.engine.units import predictions


@dataclass(frozen=True)
class Loaded:
    """The inputs as read, with the settings the memory plan applied (batch sizes)."""

    model: LoadedModel
    probes: ProbeSet
    settings: AuditSettings
    memory: MemoryPlan
    device: torch.device


@dataclass(frozen=True)
class Prepared:
    """The trained model on its device and what every map of the audit is computed for."""

    model: nn.Module
    x: Tensor
    layers: list[Layer]
    blocks: list[Block]
    predicted: Tensor
    classes: int
    fixed_target: Tensor | None  # None: each stage's own predictions are explained
    methods: list[SaliencyMethod]
    skipped: list[SkippedMethod]
    partners: np.ndarray
    passes: dict[str, int]  # the class predictions' image-passes

    @property
    def explained(self) -> Tensor:
        """The classes the trained model's maps explain."""
        return self.fixed_target if self.fixed_target is not None else self.predicted


def load(model_path: Path, probes_path: Path, settings: AuditSettings) -> Loaded:
    device = resolve_device(settings.device)
    loaded, probes = load_inputs(model_path, probes_path, settings)
    memory = plan_memory(
        loaded.module.eval().requires_grad_(False), torch.from_numpy(probes.x), settings, device
    )
    return Loaded(loaded, probes, memory.applied(settings), memory, device)


def prepare(loaded: Loaded) -> Prepared:
    """Move the model to its device and settle what the maps explain and which methods run."""
    settings, probes, device = loaded.settings, loaded.probes, loaded.device
    use_exact_kernels(device)
    model = loaded.model.module.to(device)
    x = torch.from_numpy(probes.x).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    layers = layers_in_forward_order(model, x[:1], loaded.model.module.layer_names)
    with counting(new_counter()) as predicting:
        predicted = predictions(model, x, settings)
    with torch.no_grad():
        classes = model(x[:1]).shape[1]
    target = fixed_target(settings, probes, predicted, classes)
    methods, skipped = create_methods(settings, model, x)
    partners = cross_image_partners(predicted.cpu().numpy(), settings.seed)
    blocks = stage_blocks(model, layers, settings)
    return Prepared(
        model, x, layers, blocks, predicted, classes, target, methods, skipped, partners, predicting
    )


def load_inputs(model_path: Path, probes_path: Path, settings: AuditSettings) -> tuple[LoadedModel, ProbeSet]:
    """ONNX declares its input shape, so probes are checked against it; the others need a probe batch."""
    if detect_format(model_path) == "onnx":
        loaded = load_model(model_path, output=settings.output, layout=settings.model_layout)
        probes = load_probes(
            probes_path,
            settings.preprocessing,
            loaded.module.input_shape,
            settings.max_images,
            model_layout=Layout(loaded.module.input_layout),
        )
        return loaded, probes
    stated = settings.model_layout  # a program's layout shows only once it is lowered: stated, or NCHW
    layout = stated or Layout.nchw
    probes = load_probes(probes_path, settings.preprocessing, None, settings.max_images, model_layout=layout)
    example = probes.x[: min(2, len(probes.x))]
    model = load_model(model_path, example_input=example, output=settings.output, layout=stated)
    return model, probes


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise AuditInputError(
            f"device {requested!r} is not a torch device; use 'auto', 'cpu' or 'cuda[:N]'"
        ) from None
    if device.type not in ("cpu", "cuda"):
        raise AuditInputError(f"device {requested!r} is not supported; use 'auto', 'cpu' or 'cuda[:N]'")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AuditInputError(f"device {requested!r} was requested but CUDA is not available here")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise AuditInputError(
            f"device {requested!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return device


def use_exact_kernels(device: torch.device) -> None:
    """The conversion check ran in float32 on the CPU: the maps must come from the same arithmetic.

    TF32 (on by default for cuDNN convolutions on Ampere and newer) would compute a numerically
    different model than the verified one, and nondeterministic kernels would break reproducibility.
    """
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


NONDETERMINISTIC = " does not have a deterministic implementation"  # torch's alert, after the op's name


@contextmanager
def nondeterminism_noted(device: torch.device) -> Iterator[list[str]]:
    """On a GPU, collect the ops that ran without a deterministic kernel (torch warns of each, with
    ``warn_only``): the report names them, since results through them may differ in the last bits from
    run to run. Every other warning is passed on."""
    notes: list[str] = []
    if device.type != "cuda":
        yield notes
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield notes
    ops = sorted(
        {str(w.message).split(NONDETERMINISTIC)[0] for w in caught if NONDETERMINISTIC in str(w.message)}
    )
    for other in (w for w in caught if NONDETERMINISTIC not in str(w.message)):
        warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
    if ops:
        notes.append(
            f"Not bit-reproducible on this GPU: {', '.join(ops)} ran without a deterministic CUDA kernel; "
            "maps through them may differ in the last bits between runs (every other op is deterministic)."
        )


def cross_image_partners(classes: np.ndarray, seed: int) -> np.ndarray:
    """For each image, another image to compare with, of a different class where one exists.

    The partner comes from a seeded shuffle, not from neighbours in the given order: probe folders are
    sorted by class, and neighbours of one class share more structure, which would raise the floor.
    """
    count = len(classes)
    order = np.random.default_rng([seed, 0xF1002]).permutation(count)
    partners = np.empty(count, dtype=np.int64)
    for position, image in enumerate(order):
        candidates = order[np.roll(np.arange(count), -position - 1)[:-1]]
        other_class = candidates[classes[candidates] != classes[image]]
        partners[image] = other_class[0] if len(other_class) else candidates[0]
    return partners


def fixed_target(settings: AuditSettings, probes: ProbeSet, predicted: Tensor, classes: int) -> Tensor | None:
    if settings.target is TargetPolicy.predicted:
        return predicted
    if settings.target is TargetPolicy.randomized_argmax:
        return None
    if probes.labels is None:
        raise AuditInputError(
            "target policy 'label' needs labelled probes (a 'y' array or class sub-folders)"
        )
    check_label_range(probes.labels, classes, f"{probes.source} (probes)")
    return torch.from_numpy(probes.labels).to(predicted.device)


def create_methods(
    settings: AuditSettings, model: nn.Module, x: Tensor
) -> tuple[list[SaliencyMethod], list[SkippedMethod]]:
    """Build the methods. Named ones refuse up front, naming every one that cannot run correctly; of the
    default set, those not defined on the model are skipped with their reason."""
    names = settings.methods or list(METHOD_NAMES)
    reads_layer = any(method_class(name).reads_gradcam_layer for name in names)
    gradcam = choose_target(model, x[:1], settings.gradcam_layer) if reads_layer else None
    context = MethodContext(settings, gradcam)
    methods = [create_method(name, context) for name in names]
    if settings.methods is not None:
        check_methods(methods, model, x)
        return methods, []
    kept, skipped = [], []
    for method in methods:
        try:
            method.check_supported(model, x[:1])
            kept.append(method)
        except MethodUnsupportedError as error:
            skipped.append(SkippedMethod(name=method.name, reason=str(error)))
    return kept, skipped


def check_methods(methods: list[SaliencyMethod], model: nn.Module, x: Tensor) -> None:
    """Refuse up front, naming every method that cannot give a correct map on ``model``."""
    problems = []
    for method in methods:
        try:
            method.check_supported(model, x[:1])
        except MethodUnsupportedError as error:
            problems.append(str(error))
    if problems:
        raise MethodUnsupportedError("; ".join(problems))
