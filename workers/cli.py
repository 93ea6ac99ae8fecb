"""``saliency-audit``: run the sanity checks for saliency maps in-process, with no server.

Exit codes: 0 done (and, with --fail-on-verdict, every method passed), 1 a method failed its check under
--fail-on-verdict, 2 the inputs were refused (the message says why), 130 interrupted.
"""

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError
from tqdm import tqdm

from workers.engine.settings import AuditSettings, Metric, ReinitScheme, TargetPolicy

EXIT_FAILED_CHECK = 1
EXIT_REFUSED = 2


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saliency-audit",
        description="Sanity checks for saliency maps (Adebayo et al., NeurIPS 2018) on an image classifier.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="run the model parameter randomization test and write report.json and maps.zip",
        description="Randomize the model's layers from the logits down (cascading) and one at a time "
        "(independent), recompute each method's maps and compare them with the trained model's maps.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run.add_argument("model", type=Path, help="ONNX (single file), TorchScript (.pt) or torch.export (.pt2)")
    run.add_argument(
        "probes", type=Path, help="folder of PNG/JPEG images, or a .npy/.npz array (x, optional y)"
    )
    run.add_argument(
        "--out", type=Path, default=Path("audit-out"), help="directory for report.json and maps.zip"
    )
    run.add_argument("--settings", type=Path, help="JSON file of settings; the options below override it")
    run.add_argument("--methods", help="comma-separated methods (see 'saliency-audit methods'); default all")
    run.add_argument("--tests", help="comma-separated: cascading,independent; default both")
    run.add_argument("--seed", type=int)
    run.add_argument("--target", choices=[t.value for t in TargetPolicy], help="class each map explains")
    run.add_argument("--reinit", choices=[r.value for r in ReinitScheme], help="re-initialization of layers")
    run.add_argument("--reinit-std", type=float, help="std of the 'normal' re-initialization")
    run.add_argument("--ig-steps", type=int, help="Integrated Gradients steps")
    run.add_argument("--noise-samples", type=int, help="SmoothGrad/VarGrad samples")
    run.add_argument("--noise-level", type=float, help="noise std as a fraction of each image's value range")
    run.add_argument("--gradcam-layer", help="layer GradCAM reads (default: the last convolution)")
    run.add_argument("--batch-size", type=int, help="images per batch")
    run.add_argument("--internal-batch-size", type=int, help="rows per pass for IG steps and noise samples")
    run.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="resize images to H x W")
    run.add_argument("--channels", type=int, choices=[1, 3], help="read images as grey (1) or RGB (3)")
    run.add_argument("--value-scale", type=float, help="divide raw values by this (default 255 for 8-bit)")
    run.add_argument("--mean", type=float, nargs="+", help="per-channel mean to subtract after scaling")
    run.add_argument("--std", type=float, nargs="+", help="per-channel std to divide by")
    run.add_argument("--layout", choices=["NCHW", "NHWC"], help="axis order of .npy/.npz arrays")
    run.add_argument("--metric", choices=[m.value for m in Metric], help="metric the verdict is judged on")
    run.add_argument("--threshold", type=float, help="verdict threshold on the upper 95%% confidence bound")
    run.add_argument("--device", help="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    run.add_argument(
        "--fail-on-verdict", action="store_true", help="exit 1 when any requested method fails its check"
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    commands.add_parser("methods", help="list the saliency methods")
    commands.add_parser("schema", help="print the JSON Schema of report.json")
    return parser


def _settings(args: argparse.Namespace) -> AuditSettings:
    base = (
        {}
        if args.settings is None
        else AuditSettings.model_validate_json(args.settings.read_text()).model_dump()
    )
    overrides = {
        "methods": args.methods and args.methods.split(","),
        "tests": args.tests and args.tests.split(","),
        "seed": args.seed,
        "target": args.target,
        "reinit": args.reinit,
        "reinit_std": args.reinit_std,
        "ig_steps": args.ig_steps,
        "noise_samples": args.noise_samples,
        "noise_level": args.noise_level,
        "gradcam_layer": args.gradcam_layer,
        "batch_size": args.batch_size,
        "internal_batch_size": args.internal_batch_size,
        "device": args.device,
    }
    preprocessing = {
        "size": args.size,
        "channels": args.channels,
        "value_scale": args.value_scale,
        "mean": args.mean,
        "std": args.std,
        "layout": args.layout,
    }
    verdict = {"metric": args.metric, "threshold": args.threshold}
    merged = base | {k: v for k, v in overrides.items() if v is not None}
    for section, values in (("preprocessing", preprocessing), ("verdict", verdict)):
        merged[section] = base.get(section, {}) | {k: v for k, v in values.items() if v is not None}
    return AuditSettings.model_validate(merged)


def _run(args: argparse.Namespace) -> int:
    from workers.engine.audit import ARCHIVE_FILE, REPORT_FILE, run_audit
    from workers.engine.summary import format_summary

    settings = _settings(args)
    with tqdm(desc="auditing", unit="step", disable=args.quiet, file=sys.stderr) as bar:

        def on_progress(progress) -> None:  # type: ignore[no-untyped-def]
            bar.total = progress.total
            bar.set_postfix_str(progress.phase, refresh=False)
            bar.update(progress.done - bar.n)

        report = run_audit(args.model, args.probes, settings, args.out, on_progress=on_progress)
    print(format_summary(report))
    print(f"\nreport: {args.out / REPORT_FILE}\nmaps:   {args.out / ARCHIVE_FILE}")
    failed = any(not test.verdict.passed for method in report.methods for test in method.tests)
    return EXIT_FAILED_CHECK if args.fail_on_verdict and failed else 0


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "methods":
        from workers.engine.methods import available_methods

        print("\n".join(available_methods()))
        return 0
    if args.command == "schema":
        import json

        from workers.engine.report import AuditReport

        print(json.dumps(AuditReport.model_json_schema(), indent=2))
        return 0
    from workers.engine.errors import AuditInputError

    try:
        return _run(args)
    except (AuditInputError, ValidationError, OSError) as error:
        print(f"saliency-audit: error: {error}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
