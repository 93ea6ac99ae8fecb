"""``saliency-audit``: run the sanity checks for saliency maps in-process (``run``), or serve the REST API
(``serve``).

Exit codes: 0 done (and no judged outcome named by --fail-on), 1 a model-based method's outcome is one
--fail-on names (--fail-on-verdict means --fail-on fail), 2 the inputs were refused (the message says
why), 130 interrupted. Baselines such as the edge detector are never judged, so they never cause a 1.
"""

import argparse
import sys
from enum import Enum
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ValidationError
from tqdm import tqdm

from service.client.submit import EXIT_CODES, add_submit_arguments, run_submit
from workers.cli.keys import add_key_commands, run_key_command
from workers.core.audit_settings import (
    METHOD_SUMMARIES,
    AuditSettings,
    IgBaseline,
    LayerOrder,
    Metric,
    Optimizer,
    Outcome,
    ReinitScheme,
    StageUnit,
    TargetPolicy,
    TrainingRecipe,
    VerdictRule,
)

if TYPE_CHECKING:  # the engine imports torch: commands that need it import it when they run
    from workers.core.report import AuditReport
    from workers.engine.training_twins import DataTestInputs

EXIT_FAILED_CHECK = 1
EXIT_REFUSED = 2


def _default(field: str, section: type[BaseModel] = AuditSettings) -> str:
    default = section.model_fields[field].get_default(call_default_factory=True)
    return f" (default: {default.value if isinstance(default, Enum) else default})"


def _outcomes(text: str) -> frozenset[Outcome]:
    try:
        chosen = frozenset(Outcome(name.strip()) for name in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: name fail, inconclusive or both") from None
    if Outcome.passed in chosen:
        raise argparse.ArgumentTypeError("failing on 'pass' would fail every good audit")
    return chosen


def _add_audit_options(parser: argparse.ArgumentParser) -> None:
    """The audit's settings, data-test inputs and --fail-on: the same for `run` and `submit`."""
    add = parser.add_argument
    add("--settings", type=Path, help="JSON file of settings; the options below override it")
    add("--methods", help="comma-separated methods, see 'saliency-audit methods' (default: all)")
    add(
        "--tests",
        help="comma-separated: cascading,independent,data,input_invariance,random_logit,smooth_mprt,"
        "efficient_mprt (default: cascading,independent, plus data when --twin or --train-data is given)",
    )
    add("--seed", type=int, help="seeds re-initialization and noise" + _default("seed"))
    add("--draws", type=int, help="re-initializations per parameter test" + _default("draws"))
    add(
        "--max-draws",
        type=int,
        help="an undecided parameter test gets more draws, up to this many" + _default("max_draws"),
    )
    add("--order", choices=list(LayerOrder), help="order the layers are randomized in" + _default("order"))
    add(
        "--stages",
        choices=list(StageUnit),
        help="what a stage randomizes: a block (residual or named block, as the paper did) or one layer"
        + _default("stages"),
    )
    add(
        "--max-stages",
        type=int,
        help="blocks are merged evenly to at most this many stages" + _default("max_stages"),
    )
    add(
        "--archive-all-draws",
        action="store_true",
        default=None,
        help="keep every draw's maps in maps.zip (default: draw 0's only)",
    )
    add("--target", choices=list(TargetPolicy), help="class each map explains" + _default("target"))
    add("--reinit", choices=list(ReinitScheme), help="how layers are re-initialized" + _default("reinit"))
    add("--reinit-std", type=float, help="std of the 'normal' re-initialization" + _default("reinit_std"))
    add("--ig-steps", type=int, help="Integrated Gradients steps" + _default("ig_steps"))
    add(
        "--ig-baseline",
        choices=list(IgBaseline),
        help="Integrated Gradients baseline: black pixels, zero model input, or each image's mean colour"
        + _default("ig_baseline"),
    )
    add("--noise-samples", type=int, help="SmoothGrad/VarGrad samples" + _default("noise_samples"))
    add("--noise-level", type=float, help="noise std / (max - min) of each image" + _default("noise_level"))
    add(
        "--gradcam-layer",
        help="module, layer, ONNX node or value GradCAM reads (default: the last feature map, or a ViT's "
        "last residual stream as a patch grid)",
    )
    add("--output", help="model output to audit, by name or 0-based position (default: the first)")
    add(
        "--model-layout",
        choices=["NCHW", "NHWC"],
        help="the model's input layout, NHWC for channels-last (default: read from the graph)",
    )
    add(
        "--batch-size", type=int, help="probe images per method call, at most (default: 64 within the budget)"
    )
    add(
        "--internal-batch-size",
        type=int,
        help="images per pass of IG steps and noise samples, at most (default: what the budget allows)",
    )
    add(
        "--memory-budget",
        type=int,
        metavar="MIB",
        help="memory the audit may use on its device; batch sizes follow (default: 1/4 of RAM up to 8 GiB, "
        "1/2 of a GPU)",
    )
    add("--size", type=int, nargs=2, metavar=("H", "W"), help="resize images to H x W (default: never)")
    add("--channels", type=int, choices=[1, 3], help="read images as grey or RGB (default: as the model)")
    add("--value-scale", type=float, help="divide raw values by this (default: 255 for 8-bit, 1 for floats)")
    add("--mean", type=float, nargs="+", help="per-channel mean subtracted after scaling (default: none)")
    add("--std", type=float, nargs="+", help="per-channel std divided after the mean (default: none)")
    add(
        "--layout",
        choices=["NCHW", "NHWC"],
        help="axis order of .npy/.npz arrays (default: the model's own input layout)",
    )
    add(
        "--invariance-shift",
        type=float,
        help="input invariance: shift in units of each channel's range" + _default("invariance_shift"),
    )
    add(
        "--invariance-tolerance",
        type=float,
        help="input invariance: largest relative L2 difference of invariant maps"
        + _default("invariance_tolerance"),
    )
    add(
        "--random-logit-metric",
        choices=list(Metric),
        help="random logit: similarity of the two classes' maps" + _default("random_logit_metric"),
    )
    add(
        "--random-logit-threshold",
        type=float,
        help="random logit: pass below this upper 95%% bound" + _default("random_logit_threshold"),
    )
    add(
        "--smooth-mprt-samples",
        type=int,
        help="smooth MPRT: noisy copies averaged per probe" + _default("smooth_mprt_samples"),
    )
    add(
        "--smooth-mprt-noise",
        type=float,
        help="smooth MPRT: noise std / (max - min) of each image" + _default("smooth_mprt_noise"),
    )
    add(
        "--smooth-mprt-order",
        choices=list(LayerOrder),
        help="smooth MPRT: order its cascade walks the layers" + _default("smooth_mprt_order"),
    )
    add(
        "--efficient-mprt-bins",
        type=int,
        help="efficient MPRT: histogram bins of the entropy" + _default("efficient_mprt_bins"),
    )
    add(
        "--efficient-mprt-min-share",
        type=float,
        help="efficient MPRT: pass above this lower 95%% bound of the entropy share"
        + _default("efficient_mprt_min_share"),
    )
    add("--metric", choices=list(Metric), help="metric of the verdict" + _default("metric", VerdictRule))
    add(
        "--threshold",
        type=float,
        help="pass below this upper 95%% bound" + _default("threshold", VerdictRule),
    )
    add(
        "--min-defined-images",
        type=int,
        help="fewer images with a defined similarity make a verdict inconclusive"
        + _default("min_defined_images", VerdictRule),
    )
    add("--device", help="'auto' (CUDA when present), 'cpu', 'cuda:1', ..." + _default("device"))
    data = parser.add_argument_group(
        "data randomization test",
        "compare with a model of the same architecture trained on permuted labels: give one (--twin), or "
        "labelled training data from which the audit trains it and a true-label control",
    )
    data.add_argument(
        "--retrain-gap",
        type=float,
        help="with a control, pass this far below the retrain floor" + _default("retrain_gap", VerdictRule),
    )
    data.add_argument(
        "--twin", type=Path, action="append", help="random-label twin (ONNX, TorchScript or .pt2); repeatable"
    )
    data.add_argument(
        "--control",
        type=Path,
        action="append",
        help="optional true-label model trained with another seed, with --twin; repeatable",
    )
    data.add_argument(
        "--train-data", type=Path, help=".npz with x and y, or a zip of class folders of images"
    )
    recipe = TrainingRecipe.model_fields
    data.add_argument(
        "--optimizer", choices=list(Optimizer), help=f"(default: {recipe['optimizer'].default})"
    )
    data.add_argument("--learning-rate", type=float, help=f"(default: {recipe['learning_rate'].default})")
    data.add_argument("--train-batch-size", type=int, help=f"(default: {recipe['batch_size'].default})")
    data.add_argument("--max-epochs", type=int, help=f"(default: {recipe['max_epochs'].default})")
    data.add_argument(
        "--max-seconds", type=float, help=f"per model (default: {recipe['max_seconds'].default})"
    )
    data.add_argument(
        "--memorize-accuracy",
        type=float,
        help=f"training accuracy each model must reach (default: {recipe['memorize_accuracy'].default})",
    )
    data.add_argument(
        "--train-models",
        type=int,
        help=f"twins trained, and as many controls (default: {recipe['models'].default})",
    )
    data.add_argument(
        "--max-train-models",
        type=int,
        help="an undecided data test trains more, up to this many of each "
        f"(default: {recipe['max_models'].default})",
    )
    data.add_argument(
        "--holdout-fraction",
        type=float,
        help=f"share held out to test accuracy (default: {recipe['holdout_fraction'].default})",
    )
    add(
        "--fail-on",
        type=_outcomes,
        default=frozenset(),
        help="exit 1 when a model-based method's outcome is one of these, comma-separated: fail, "
        "inconclusive (default: none; baselines are never judged)",
    )
    add("--fail-on-verdict", action="store_true", help="the same as --fail-on fail")
    add("--quiet", action="store_true", help="no progress bar")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saliency-audit",
        description="Sanity checks for saliency maps (Adebayo et al., NeurIPS 2018) on an image classifier.",
    )
    parser.add_argument("--version", action="version", version=f"saliency-audit {version('saliency-audit')}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="run the model parameter randomization test and write report.json and maps.zip",
        description="Randomize the model's layers from the logits down (cascading) and one at a time "
        "(independent), recompute each method's maps and compare them with the trained model's maps.",
    )
    add = run.add_argument
    add("model", type=Path, help="ONNX (single file), TorchScript (.pt) or torch.export (.pt2) file")
    add("probes", type=Path, help="folder of PNG/JPEG images, or a .npy/.npz array (x, optional labels y)")
    add("--out", type=Path, default=Path("audit-out"), help="directory for the results (default: audit-out)")
    _add_audit_options(run)
    submit = commands.add_parser(
        "submit",
        help="run the audit on a remote service (a CI gate): upload, submit, wait, download, judge",
        description="Upload the model and probes to a running service (skipping files it already has), "
        "submit the audit with the options below and, with --wait, follow it and download report.json, "
        "report.html and maps.zip into --out. Exit codes: "
        + "; ".join(f"{code} {meaning}" for code, meaning in EXIT_CODES.items()),
    )
    submit.add_argument(
        "model", type=Path, help="ONNX (single file), TorchScript (.pt) or torch.export (.pt2)"
    )
    submit.add_argument("probes", type=Path, help=".npy/.npz array, a zip of PNG/JPEG, or a folder of them")
    submit.add_argument(
        "--out",
        type=Path,
        default=Path("audit-out"),
        help="where --wait downloads the results (default: audit-out)",
    )
    add_submit_arguments(submit)
    _add_audit_options(submit)
    demo = commands.add_parser(
        "demo",
        help="audit a small CNN trained here on scikit-learn's digits, every test, and write the HTML report",
        description="No files needed: trains a small CNN on scikit-learn's bundled digits (seconds), exports "
        "it to ONNX and runs every test on 64 held-out digits, the data test training its random-label "
        "twins and true-label controls on 200 digits here. It uses 16 Integrated Gradients steps and "
        "noise samples (run: 50) and a training learning rate of 0.003 (run: 0.001). Writes the model, "
        "probes and training data it used, report.html, report.json, figures/ and maps.zip into --out. "
        "About a minute on a 2-core CPU.",
    )
    demo.add_argument(
        "--out", type=Path, default=Path("demo-out"), help="directory for the results (default: demo-out)"
    )
    demo.add_argument("--methods", help="comma-separated methods (default: all)")
    demo.add_argument(
        "--tests", default="cascading,independent,data", help="comma-separated tests (default: all three)"
    )
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    commands.add_parser("methods", help="list the saliency methods, one line each")
    commands.add_parser("schema", help="print the JSON Schema of report.json")
    serve = commands.add_parser(
        "serve",
        help="run the HTTP API (with an in-process worker unless SALIENCY_BROKER_URL is set)",
        description="Serve the REST API. Without SALIENCY_BROKER_URL, jobs run on a worker thread of this "
        "process, on a SQLite job store and files under the data directory: nothing else to install. With "
        "it, jobs go to Celery workers (celery -A workers.worker.celery_app worker -Q audit-cpu). Other "
        "settings: "
        "SALIENCY_DATABASE_URL, SALIENCY_MAX_UPLOAD_BYTES, SALIENCY_MAX_ATTEMPTS (see README).",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    serve.add_argument(
        "--data-dir",
        type=Path,
        help="uploads, results and the SQLite store (default: $SALIENCY_DATA_DIR or ./saliency-data)",
    )
    serve.add_argument(
        "--auth",
        choices=["keys", "local"],
        help="'keys': every request needs an API key (saliency-audit keys create); 'local': requests without "
        "a key act as the local tenant, allowed on a loopback address only (default: $SALIENCY_AUTH, else "
        "local on a loopback address and keys on any other)",
    )
    add_key_commands(commands)
    commands.add_parser("openapi", help="print the OpenAPI document of the REST API")
    return parser


def _settings(args: argparse.Namespace) -> AuditSettings:
    from_file = (
        None if args.settings is None else AuditSettings.model_validate_json(args.settings.read_text())
    )
    base = {} if from_file is None else from_file.model_dump()
    overrides = {
        "methods": args.methods and args.methods.split(","),
        "tests": args.tests and args.tests.split(","),
        "seed": args.seed,
        "draws": args.draws,
        "max_draws": args.max_draws,
        "order": args.order,
        "stages": args.stages,
        "max_stages": args.max_stages,
        "archive_all_draws": args.archive_all_draws,
        "target": args.target,
        "reinit": args.reinit,
        "reinit_std": args.reinit_std,
        "ig_steps": args.ig_steps,
        "ig_baseline": args.ig_baseline,
        "noise_samples": args.noise_samples,
        "noise_level": args.noise_level,
        "gradcam_layer": args.gradcam_layer,
        "output": args.output,
        "model_layout": args.model_layout,
        "batch_size": args.batch_size,
        "internal_batch_size": args.internal_batch_size,
        "memory_budget_mib": args.memory_budget,
        "device": args.device,
        "invariance_shift": args.invariance_shift,
        "invariance_tolerance": args.invariance_tolerance,
        "random_logit_metric": args.random_logit_metric,
        "random_logit_threshold": args.random_logit_threshold,
        "smooth_mprt_samples": args.smooth_mprt_samples,
        "smooth_mprt_noise": args.smooth_mprt_noise,
        "smooth_mprt_order": args.smooth_mprt_order,
        "efficient_mprt_bins": args.efficient_mprt_bins,
        "efficient_mprt_min_share": args.efficient_mprt_min_share,
    }
    preprocessing = {
        "size": args.size,
        "channels": args.channels,
        "value_scale": args.value_scale,
        "mean": args.mean,
        "std": args.std,
        "layout": args.layout,
    }
    verdict = {
        "metric": args.metric,
        "threshold": args.threshold,
        "retrain_gap": args.retrain_gap,
        "min_defined_images": args.min_defined_images,
    }
    training = {
        "optimizer": args.optimizer,
        "learning_rate": args.learning_rate,
        "batch_size": args.train_batch_size,
        "max_epochs": args.max_epochs,
        "max_seconds": args.max_seconds,
        "memorize_accuracy": args.memorize_accuracy,
        "holdout_fraction": args.holdout_fraction,
        "models": args.train_models,
        "max_models": args.max_train_models,
    }
    tests_chosen = args.tests is not None or (from_file is not None and "tests" in from_file.model_fields_set)
    if not tests_chosen and (args.twin or args.train_data):
        overrides["tests"] = ["cascading", "independent", "data"]
    merged = base | {k: v for k, v in overrides.items() if v is not None}
    for section, values in (("preprocessing", preprocessing), ("verdict", verdict), ("training", training)):
        merged[section] = base.get(section, {}) | {k: v for k, v in values.items() if v is not None}
    return AuditSettings.model_validate(merged)


def _refusal(args: argparse.Namespace) -> str | None:
    """What is wrong with a run's or demo's arguments, found before torch is imported (seconds)."""
    if args.command == "run":
        named = [("model", args.model), ("probes", args.probes), ("--settings", args.settings)]
        named += [("--train-data", args.train_data)]
        named += [("--twin", path) for path in args.twin or ()] + [
            ("--control", p) for p in args.control or ()
        ]
        for what, path in named:
            if path is not None and not path.exists():
                return f"{what} {path} does not exist"
    try:
        _settings(args) if args.command == "run" else _demo_settings(args)
    except ValidationError as error:
        return validation_message(error)
    except (OSError, ValueError) as error:  # an unreadable --settings file
        return str(error)
    return None


def validation_message(error: ValidationError) -> str:
    """One line per field, without pydantic's links: what a user has to change."""
    parts = []
    for entry in error.errors():
        where = ".".join(str(part) for part in entry["loc"])
        message = entry["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def _run(args: argparse.Namespace) -> int:
    from workers.engine.training_twins import DataTestInputs

    data_inputs = None
    if args.twin or args.train_data or args.control:
        data_inputs = DataTestInputs(
            twins=tuple(args.twin or ()),
            controls=tuple(args.control or ()),
            training_data=args.train_data,
        )
    report = _audit(args.model, args.probes, _settings(args), args.out, data_inputs, args.quiet)
    fail_on = args.fail_on | ({Outcome.failed} if args.fail_on_verdict else set())
    outcomes = {t.verdict.outcome for m in report.methods for t in m.tests if t.verdict is not None}
    return EXIT_FAILED_CHECK if outcomes & fail_on else 0


def _demo(args: argparse.Namespace) -> int:
    from workers.cli.demo import build_demo_inputs
    from workers.engine.training_twins import DataTestInputs

    if not args.quiet:
        print("training a small CNN on scikit-learn's digits...", file=sys.stderr)
    inputs = build_demo_inputs(args.out / "inputs")
    settings = _demo_settings(args)
    data = DataTestInputs(training_data=inputs.training_data) if "data" in settings.tests else None
    _audit(inputs.model, inputs.probes, settings, args.out, data, args.quiet)
    return 0


# What the demo changes from the defaults to show every test in about a minute on 2 CPU cores: 16 IG steps
# and noise samples instead of the paper's 50 (the same outcomes on the demo's CNN), and a learning rate
# with which its twins memorize random labels in about 45 epochs instead of 70. `run` keeps the defaults.
DEMO_SETTINGS = {"ig_steps": 16, "noise_samples": 16, "training": {"learning_rate": 3e-3}}


def _demo_settings(args: argparse.Namespace) -> AuditSettings:
    chosen = {"methods": args.methods and args.methods.split(","), "tests": args.tests.split(",")}
    return AuditSettings.model_validate(DEMO_SETTINGS | {k: v for k, v in chosen.items() if v})


def _audit(
    model: Path,
    probes: Path,
    settings: AuditSettings,
    out: Path,
    data_inputs: "DataTestInputs | None",
    quiet: bool,
) -> "AuditReport":
    """Run the audit with a progress bar, write its figures and HTML report, print the summary."""
    from workers.core.summary import format_summary
    from workers.engine.audit import ARCHIVE_FILE, REPORT_FILE, run_audit
    from workers.engine.html_report import write_html_report

    with tqdm(desc="auditing", unit="step", disable=quiet, file=sys.stderr) as bar:

        def on_progress(progress) -> None:  # type: ignore[no-untyped-def]
            bar.total = progress.total
            bar.set_postfix_str(progress.phase, refresh=False)
            bar.update(progress.done - bar.n)

        report = run_audit(model, probes, settings, out, on_progress=on_progress, data_inputs=data_inputs)
        bar.set_postfix_str("figures and HTML report")
        html = write_html_report(report, out)
    print(format_summary(report))
    print(f"\nreport: {html}\njson:   {out / REPORT_FILE}\nmaps:   {out / ARCHIVE_FILE}")
    return report


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.api.app import create_app
    from workers.core import logs
    from workers.core.config import AuthMode, Settings

    overrides = {"data_dir": args.data_dir, "auth": args.auth}
    settings = Settings(**{name: value for name, value in overrides.items() if value is not None})
    loopback = _is_loopback(args.host)
    if settings.auth is None:
        settings = settings.model_copy(update={"auth": AuthMode.local if loopback else AuthMode.keys})
    if settings.auth is AuthMode.local and not loopback:
        print(
            f"saliency-audit: error: --auth local serves anyone who reaches {args.host} without a key; "
            "bind a loopback address (127.0.0.1) or use API keys (saliency-audit keys create)",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    if settings.broker_url is None and not _engine_installed():
        print(
            "saliency-audit: error: the embedded worker runs audits, which need the engine: install "
            "'saliency-audit[engine]', or set SALIENCY_BROKER_URL to hand audits to Celery workers",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    mode = f"Celery broker {settings.broker_url}" if settings.broker_url else "embedded worker"
    access = "API keys required" if settings.auth is AuthMode.keys else "local tenant without a key"
    print(
        f"saliency-audit: serving http://{args.host}:{args.port} ({mode}, {access}, "
        f"data in {settings.data_dir})"
    )
    # the service's own messages (jobs queued and failed, lost workers requeued), each with its request and
    # job ids; uvicorn's access log stays off
    logs.configure(settings.log_format)
    # log_config=None: uvicorn's own warnings go through the service's handler (JSON lines stay JSON)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning", log_config=None)
    return 0


def _engine_installed() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("torch") is not None
    except ImportError:
        return False


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the command's own usage, not the top-level one
        _command_parser(parser, args.command).error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "methods":  # the names known without torch (a test keeps them in step)
        width = max(map(len, METHOD_SUMMARIES))
        print("\n".join(f"{name:<{width}}  {summary}" for name, summary in METHOD_SUMMARIES.items()))
        return 0
    if args.command == "schema":
        import json

        from workers.core.report import AuditReport

        print(json.dumps(AuditReport.model_json_schema(), indent=2))
        return 0
    if args.command == "serve":
        return _serve(args)
    if args.command == "keys":
        return run_key_command(args)
    if args.command == "submit":
        try:
            settings = _settings(args)
        except ValidationError as error:
            print(f"saliency-audit: error: {validation_message(error)}", file=sys.stderr)
            return EXIT_REFUSED
        return run_submit(args, settings)
    if args.command == "openapi":
        import json

        from service.api.app import create_app

        print(json.dumps(create_app().openapi(), indent=2))
        return 0
    refused = _refusal(args)
    if refused is not None:
        print(f"saliency-audit: error: {refused}", file=sys.stderr)
        return EXIT_REFUSED
    from workers.core.errors import AuditInputError

    try:
        return _demo(args) if args.command == "demo" else _run(args)
    except (AuditInputError, ValidationError, OSError) as error:
        print(f"saliency-audit: error: {error}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130


def _command_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices[command]


if __name__ == "__main__":
    sys.exit(main())
