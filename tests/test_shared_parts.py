"""Work shared between methods (docs/decisions/0024): SmoothGrad and VarGrad are moments of one set of
noisy gradients, Guided GradCAM the product of the same stage's Guided Backprop and GradCAM maps. Run
together, each part is computed once; every map is bit for bit the map the method gives alone."""

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TrainedDigits
from workers.core.audit_settings import AuditSettings
from workers.core.report import AuditReport
from workers.engine.audit import run_audit

SHARING = ["smoothgrad", "vargrad", "guided_backprop", "gradcam", "guided_gradcam"]
COMMON = {"tests": ["cascading"], "draws": 1, "max_draws": 1, "noise_samples": 4, "batch_size": 16}


@pytest.fixture(scope="module")
def audits(
    trained_digits: TrainedDigits, tmp_path_factory: pytest.TempPathFactory
) -> tuple[tuple[AuditReport, Path], dict[str, tuple[AuditReport, Path]]]:
    def audit(methods: list[str], name: str) -> tuple[AuditReport, Path]:
        out = tmp_path_factory.mktemp(name)
        settings = AuditSettings(methods=methods, **COMMON)
        return run_audit(trained_digits.onnx_legacy, trained_digits.probes, settings, out), out

    together = audit(SHARING, "together")
    return together, {method: audit([method], method) for method in SHARING}


def _arrays(out: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(out / "maps.zip") as archive:
        manifest = json.loads(archive.read("manifest.json"))
        return {
            entry["path"]: np.load(io.BytesIO(archive.read(entry["path"])))
            for entry in manifest["arrays"]
            if "method" in entry
        }


def test_maps_computed_together_are_bit_identical_to_each_method_alone(audits) -> None:
    (_, together_out), alone = audits
    together = _arrays(together_out)
    compared = 0
    for _, out in alone.values():
        for path, maps in _arrays(out).items():
            assert maps.dtype == together[path].dtype and np.array_equal(maps, together[path]), path
            compared += 1
    assert compared == len(together) and compared >= len(SHARING) * 5  # trained and every stage's maps


def test_a_shared_part_is_computed_once_and_counted_for_the_method_that_computed_it(audits) -> None:
    (together, _), alone = audits
    passes = {m.name: m.image_passes for m in together.methods}
    assert passes["vargrad"].backward == 0 and passes["guided_gradcam"].backward == 0
    for method in ("smoothgrad", "guided_backprop", "gradcam"):
        own = next(m for m in alone[method][0].methods if m.name == method).image_passes
        assert passes[method] == own, method
    backward_alone = sum(report.image_passes.backward for report, _ in alone.values())
    shared = sum(alone[method][0].image_passes.backward for method in ("vargrad", "guided_gradcam"))
    assert together.image_passes.backward == backward_alone - shared > 0


def test_the_report_counts_image_passes_per_method_and_in_total(audits) -> None:
    (together, _), alone = audits
    smoothgrad = next(m for m in alone["smoothgrad"][0].methods if m.name == "smoothgrad")
    images, stages = together.probes.count, len(smoothgrad.tests[0].stages)
    # noise samples x images at each stage (the trained model is stage 0), and once more for the
    # self-similarity's second noise draw
    assert smoothgrad.image_passes.backward == COMMON["noise_samples"] * images * (stages + 1)
    predictions = together.image_passes.forward - sum(m.image_passes.forward for m in together.methods)
    assert predictions == images  # the trained model's classes, once
