"""The engine's later checks against Quantus 0.6's SmoothMPRT, EfficientMPRT and RandomLogit on the LeNet
probes (docs/decisions/0023).

    python -m bench.quantus_later ../shared/data/mnist-lenet [--rounds 2] [--samples 50] [--venv ...]

Quantus runs in its own virtualenv (bench/.venv-quantus, made on first use, as bench/quantus_mprt.py
does), never in the project's. Both sides: Gradient, Integrated Gradients with 10 steps, Gradient x Input;
every map explains the trained model's prediction; one draw. Smooth MPRT: ``--samples`` noisy copies with
noise std 0.1 x each image's range, bottom-up, mean Spearman of absolute maps per layer. Efficient MPRT:
100-bin entropy of absolute maps, trained vs fully randomized model. Random logit: SSIM between the
explained class's map and that of a class drawn uniformly from the others, on absolute maps. Rounds
alternate: Quantus's three metrics (timed inside its process, imports excluded), then the engine's three
audits, one per check (timed in-process after a warm-up). Prints the numbers side by side per method and
the times; writes bench/quantus_later.json.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.matched import METHODS, SETTINGS, engine_audit, machine, timed
from bench.quantus_mprt import quantus_python
from bench.tables import markdown_table
from workers.core.audit_settings import AuditSettings, LayerOrder, Metric, RandomizationTest
from workers.core.report import (
    ENTROPY_RANDOM,
    ENTROPY_RISE,
    ENTROPY_SHARE,
    ENTROPY_TRAINED,
    AuditReport,
    TestResult,
)

HERE = Path(__file__).parent
CHECKS = [RandomizationTest.smooth_mprt, RandomizationTest.efficient_mprt, RandomizationTest.random_logit]
SHORT = {"smooth_mprt": "smooth", "efficient_mprt": "efficient", "random_logit": "logit"}


def later_settings(test: RandomizationTest, samples: int) -> AuditSettings:
    """The matched LeNet work's methods, IG steps and one draw, for one later check with Quantus's
    settings where the engine has them (its defaults, but for the sample count)."""
    return AuditSettings.model_validate(
        SETTINGS.model_dump()
        | {
            "tests": [test],
            "smooth_mprt_samples": samples,
            "smooth_mprt_noise": 0.1,
            "smooth_mprt_order": LayerOrder.bottom_up,
            "efficient_mprt_bins": 100,
            "random_logit_metric": Metric.ssim,
        }
    )


def result(report: AuditReport, method: str) -> TestResult:
    (found,) = (m.tests[0] for m in report.methods if m.name == method)
    return found


def verdict(test: TestResult) -> str:
    assert test.verdict is not None
    return f"{test.verdict.outcome.value.upper()} {test.verdict.estimate.mean:.2f}"


def engine_numbers(reports: dict[str, AuditReport], methods: list[str]) -> dict:
    numbers: dict[str, dict] = {check.value: {} for check in CHECKS}
    for method in methods:
        smooth = result(reports["smooth_mprt"], method)
        numbers["smooth_mprt"][method] = {
            "layers": [stage.similarity[Metric.spearman_abs].mean for stage in smooth.stages[1:]],
            "labels": [stage.label for stage in smooth.stages[1:]],
            "verdict": verdict(smooth),
        }
        efficient = result(reports["efficient_mprt"], method)
        (randomized,) = efficient.stages[1:]
        numbers["efficient_mprt"][method] = {
            name: randomized.measures[name].mean
            for name in (ENTROPY_TRAINED, ENTROPY_RANDOM, ENTROPY_RISE, ENTROPY_SHARE)
        } | {"verdict": verdict(efficient)}
        logit = result(reports["random_logit"], method)
        (other,) = logit.stages[1:]
        numbers["random_logit"][method] = {
            "ssim": other.similarity[Metric.ssim].mean,
            "verdict": verdict(logit),
        }
    return numbers


def pair(quantus: float, engine: float | None) -> str:
    return f"{quantus:.3f} / {'-' if engine is None else f'{engine:.3f}'}"


def print_tables(quantus: dict, variants: dict, engine: dict, rounds: list[dict]) -> None:
    print(f"machine: {machine()}\n")
    header = ["round"] + [f"{side} {SHORT[c]} (s)" for c in SHORT for side in ("Quantus", "engine")]
    rows = [
        [index]
        + [f"{r[side][c]:.2f}" for c in SHORT for side in ("quantus", "engine")]
        + [f"{sum(r['quantus'].values()):.2f}", f"{sum(r['engine'].values()):.2f}"]
        + [f"{sum(r['quantus'].values()) / sum(r['engine'].values()):.2f}x"]
        for index, r in enumerate(rounds, start=1)
    ]
    print(markdown_table([*header, "Quantus total (s)", "engine total (s)", "engine speed-up"], rows))

    smooth = quantus["smooth_mprt"]
    layers = [layer for layer in next(iter(smooth.values())) if layer != "original"]
    print("\nSmooth MPRT: mean Spearman of absolute smoothed maps per stage, bottom-up (Quantus / engine):\n")
    rows = []
    for method, scores in smooth.items():
        ours = engine["smooth_mprt"][method]
        curve = sum(scores[layer] for layer in layers) / len(layers)
        rows.append(
            [method, f"{scores['original']:.3f} / 1"]
            + [pair(scores[layer], e) for layer, e in zip(layers, ours["layers"], strict=True)]
            + [pair(curve, sum(ours["layers"]) / len(ours["layers"])), ours["verdict"]]
        )
    print(markdown_table(["method", "trained", *layers, "mean over layers", "engine verdict"], rows))

    print("\nEfficient MPRT: mean entropy (nats) of absolute maps and relative rise (Quantus / engine):\n")
    rows = [
        [
            method,
            pair(q["entropy_trained"], engine["efficient_mprt"][method][ENTROPY_TRAINED]),
            pair(q["entropy_random"], engine["efficient_mprt"][method][ENTROPY_RANDOM]),
            pair(q["entropy_rise"], engine["efficient_mprt"][method][ENTROPY_RISE]),
            f"{variants['efficient_mprt_signed'][method]['entropy_rise']:.3f}",
            f"{variants['efficient_mprt_clipped'][method]['entropy_rise']:.3f}",
            f"{engine['efficient_mprt'][method][ENTROPY_SHARE]:.3f}",
            engine["efficient_mprt"][method]["verdict"],
        ]
        for method, q in quantus["efficient_mprt"].items()
    ]
    print(
        markdown_table(
            [
                "method",
                "H trained",
                "H randomized",
                "relative rise",
                "Quantus rise, signed maps (its default)",
                "Quantus rise, engine's histogram",
                "engine share of the way to noise",
                "engine verdict",
            ],
            rows,
        )
    )

    print("\nRandom logit: mean SSIM, explained class's map vs another class's:\n")
    rows = [
        [
            method,
            f"{variants['random_logit_signed'][method]:.3f}",
            f"{q:.3f}",
            f"{variants['random_logit_ssim_2d'][method]:.3f}",
            f"{engine['random_logit'][method]['ssim']:.3f}",
            engine["random_logit"][method]["verdict"],
        ]
        for method, q in quantus["random_logit"].items()
    ]
    print(
        markdown_table(
            [
                "method",
                "Quantus, signed (its default)",
                "Quantus, absolute",
                "Quantus, absolute, engine's 2-D SSIM",
                "engine",
                "engine verdict",
            ],
            rows,
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path, help="folder with lenet_mnist.onnx and probes.npz")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--samples", type=int, default=50, help="smooth MPRT's noisy copies (both: 50)")
    parser.add_argument("--venv", type=Path, default=HERE / ".venv-quantus")
    args = parser.parse_args()
    python = quantus_python(args.venv)
    out = Path(tempfile.mkdtemp())
    settings = {check.value: later_settings(check, args.samples) for check in CHECKS}
    # warm-up: imports, first-call allocations; its reports give the engine's numbers (seeded: every
    # round computes the same)
    reports = {check: engine_audit(args.data, out, s) for check, s in settings.items()}
    rounds, variants = [], {}
    for index in range(args.rounds):
        quantus = subprocess.run(
            [python, HERE / "quantus_later_side.py", args.data, "1", str(args.samples), str(int(index == 0))],
            check=True,
            capture_output=True,
            text=True,
        )
        lines = [json.loads(line) for line in quantus.stdout.strip().splitlines() if line.startswith("{")]
        quantus_round = next(line for line in lines if "seconds" in line)
        variants = next((line["variants"] for line in lines if "variants" in line), variants)
        engine_seconds = {
            check: timed(lambda s=s: engine_audit(args.data, out, s)) for check, s in settings.items()
        }
        rounds.append({"quantus": quantus_round.pop("seconds"), "engine": engine_seconds})
    engine = engine_numbers(reports, METHODS)
    print_tables(quantus_round, variants, engine, rounds)
    (HERE / "quantus_later.json").write_text(
        json.dumps(
            {
                "machine": machine(),
                "samples": args.samples,
                "rounds": rounds,
                "quantus": quantus_round,
                "quantus_variants": variants,
                "engine": engine,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    sys.exit(main())
