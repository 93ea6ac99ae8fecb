"""``saliency-audit``: run the sanity checks for saliency maps in-process (``run``), or serve the REST API
(``serve``).

Exit codes: 0 done (and no judged outcome named by --fail-on), 1 a model-based method's outcome is one
--fail-on names (--fail-on-verdict means --fail-on fail), 2 the inputs were refused (the message says
why), 130 interrupted. Baselines such as the edge detector are never judged, so they never cause a 1.
"""

import argparse
import sys
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError
from tqdm import tqdm

from service.client.submit import EXIT_CODES, add_submit_arguments, run_submit
from workers.cli.keys import add_key_commands, run_key_command
from workers.cli.options import add_setting_options, setting_overrides
from workers.core.audit_settings import METHOD_SUMMARIES, AuditSettings, Outcome

if TYPE_CHECKING:  # the engine imports torch: commands that need it import it when they run
    from workers.core.report import AuditReport
    from workers.engine.training_twins import DataTestInputs

EXIT_FAILED_CHECK = 1
EXIT_REFUSED = 2


def _outcomes(text: str) -> frozenset[Outcome]:
    try:
        chosen = frozenset(Outcome(name.strip()) for name in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: name fail, inconclusive or both") from None
    if Outcome.passed in chosen:
        raise argparse.ArgumentTypeError("failing on 'pass' would fail every good audit")
    return chosen


def _add_audit_options(parser: argparse.ArgumentParser) -> None:
    """The audit's settings (one option per field of AuditSettings), data-test inputs and --fail-on: the
    same for `run` and `submit`."""
    add = parser.add_argument
    add("--settings", type=Path, help="JSON file of settings; the options below override it")
    data = parser.add_argument_group(
        "data randomization test",
        "compare with a model of the same architecture trained on permuted labels: give one (--twin), or "
        "labelled training data from which the audit trains it and a true-label control",
    )
    add_setting_options(parser, data)
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
    overrides = setting_overrides(args)
    tests_chosen = args.tests is not None or (from_file is not None and "tests" in from_file.model_fields_set)
    if not tests_chosen and (args.twin or args.train_data):
        overrides["tests"] = ["cascading", "independent", "data"]
    merged = base | overrides
    for section, values in overrides.items():
        if isinstance(values, dict):  # a nested section: the file's fields, those given here replaced
            merged[section] = base.get(section, {}) | values
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
