"""Report assembly: each method's stages summarized, its calibration rows, and the audit's provenance
(probes, memory, versions, notes). Nothing here computes a map of a randomized model."""

import platform
from importlib import metadata

import numpy as np
import torch
from torch import Tensor, nn

from workers.core.audit_settings import AuditSettings, ReinitScheme
from workers.core.probes import ProbeSet
from workers.core.report import MemoryUse, MethodResult, MetricTable, ProbeInfo, Stage, TestResult, Versions
from workers.engine.budget import MIB, MemoryPlan
from workers.engine.checks import StageValues
from workers.engine.forward_record import ForwardRecord
from workers.engine.layers import NORMALIZATIONS, Layer
from workers.engine.passes import as_report
from workers.engine.similarity import PreparedMaps, compare_prepared, prepare
from workers.engine.statistics import summarize, summarize_all
from workers.engine.units import MethodState


def stage_zero(partners: np.ndarray, maps: PreparedMaps, label: str, note: str | None = None) -> Stage:
    """The row every test's table starts with: the maps compared with themselves and across images."""
    return Stage(
        index=0,
        label=label,
        randomized_layers=[],
        similarity=summarize_all(compare_prepared(maps, maps)),
        cross_image_floor=summarize_all(compare_prepared(maps, maps[partners])),
        degenerate_maps=int(maps.constant.sum()),
        non_finite_maps=int(maps.non_finite.sum()),
        note=note,
    )


def summarized(values: StageValues) -> Stage:
    return Stage(
        index=values.index,
        label=values.label,
        randomized_layers=[layer.name for layer in values.randomized],
        similarity={metric: summarize(np.stack(tables)) for metric, tables in values.similarity.items()},
        cross_image_floor={metric: summarize(np.stack(t)) for metric, t in values.cross_image.items()},
        degenerate_maps=values.degenerate,
        non_finite_maps=values.non_finite,
        measures={name: summarize(np.stack(tables)) for name, tables in values.measures.items()},
        note=values.note,
    )


class Calibration:
    """The rows every method's maps get beside the tests: random masks, a second noise draw and the
    model-free Sobel edges; masks are drawn once per map shape and serve every method."""

    def __init__(self, x: Tensor, edges: PreparedMaps, seed: int) -> None:
        self.x, self.edges, self.seed = x, edges, seed
        self._masks: dict[int, PreparedMaps] = {}

    def random_masks(self, channels: int) -> PreparedMaps:
        if channels not in self._masks:
            shape = (len(self.x), channels, *self.x.shape[2:])
            masks = np.random.default_rng([self.seed, 0xCA11]).random(shape, dtype=np.float32)
            self._masks[channels] = prepare(torch.from_numpy(masks).to(self.x.device))
        return self._masks[channels]

    def method_result(
        self,
        state: MethodState,
        trained_stage: Stage,
        tests: list[TestResult],
        self_similarity: MetricTable | None,
        seconds: float,
        passes: dict[str, int],
    ) -> MethodResult:
        method, trained = state.method, state.trained
        return MethodResult(
            name=method.name,
            baseline=state.baseline,
            stochastic=method.stochastic,
            parameters=method.parameters(),
            random_mask_calibration=summarize_all(
                compare_prepared(trained, self.random_masks(len(state.raw[0])))
            ),
            self_similarity=self_similarity,
            edge_detector_similarity=summarize_all(compare_prepared(trained, self.edges)),
            degenerate_trained_maps=trained_stage.degenerate_maps,
            non_finite_trained_maps=trained_stage.non_finite_maps,
            tests=tests,
            seconds=seconds,
            image_passes=as_report(passes),
        )


def memory_use(plan: MemoryPlan, record: ForwardRecord, device: torch.device) -> MemoryUse:
    peak = torch.cuda.max_memory_allocated(device) / MIB if device.type == "cuda" else None
    return MemoryUse(
        budget_mib=plan.budget_bytes / MIB,
        image_forward_mib=plan.image_bytes / MIB,
        batch_size=plan.batch_size,
        internal_batch_size=plan.internal_batch_size,
        recorded_forward_mib=record.used_bytes / MIB,
        device_peak_mib=peak,
    )


def probe_info(probes: ProbeSet, x: Tensor, predicted: Tensor) -> ProbeInfo:
    accuracy = None
    if probes.labels is not None:
        accuracy = float((predicted.cpu().numpy() == probes.labels).mean())
    return ProbeInfo(
        filename=probes.source,
        sha256=probes.sha256,
        count=len(probes.x),
        shape=list(x.shape),
        labels=probes.labels is not None,
        trained_accuracy=accuracy,
    )


def versions() -> Versions:
    return Versions(
        engine=metadata.version("saliency-audit"),
        python=platform.python_version(),
        torch=torch.__version__,
        captum=metadata.version("captum"),
        onnx=metadata.version("onnx"),
        onnxruntime=metadata.version("onnxruntime"),
        numpy=np.__version__,
    )


def model_notes(model: nn.Module, layers: list[Layer], settings: AuditSettings) -> list[str]:
    return _constant_notes(model) + _normalization_notes(model, layers, settings)


def _normalization_notes(model: nn.Module, layers: list[Layer], settings: AuditSettings) -> list[str]:
    """Say how normalization layers were re-initialized: not by their own initializer (the identity)."""
    normalizations = [
        layer.name for layer in layers if isinstance(model.get_submodule(layer.path), NORMALIZATIONS)
    ]
    if not normalizations or settings.reinit is not ReinitScheme.default:
        return []
    return [
        f"{len(normalizations)} normalization layer(s) ({', '.join(normalizations[:10])}"
        f"{' ...' if len(normalizations) > 10 else ''}) are re-initialized with scale ~ U(0, 1) and shift 0: "
        "their own initializer (scale 1, shift 0) would make a stage that only removes normalization"
    ]


def _constant_notes(model: nn.Module) -> list[str]:
    """Float constants outside the layers are never randomized: say so, since they may be learned."""
    owners = dict(model.named_modules())
    constants = [
        name
        for name, buffer in model.named_buffers()
        if buffer.is_floating_point()
        and buffer.numel() > 1
        and not any(True for _ in owners[name.rpartition(".")[0]].parameters(recurse=False))
    ]
    if not constants:
        return []
    return [
        f"{len(constants)} float constant tensor(s) outside the layers are kept as trained at every stage "
        f"(not randomized): {', '.join(constants[:10])}{' ...' if len(constants) > 10 else ''}"
    ]
