"""The command line's audit options are generated from AuditSettings: every field is an option of `run`
and `submit`, helped by its description and default, and each option's value lands in its field."""

import pytest

from workers.cli.main import _build_parser, _command_parser, _settings
from workers.cli.options import setting_options
from workers.core.audit_settings import AuditSettings, Layout, Metric, Optimizer, RandomizationTest


def _fields(model: type = AuditSettings, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    found = set()
    for name, field in model.model_fields.items():
        nested = field.annotation if isinstance(field.annotation, type) else None
        if nested is not None and hasattr(nested, "model_fields"):
            found |= _fields(nested, (*prefix, name))
        else:
            found.add((*prefix, name))
    return found


@pytest.mark.parametrize("command", ["run", "submit"])
def test_every_setting_is_an_option_helped_by_its_description(command: str) -> None:
    actions = {
        flag: action
        for action in _command_parser(_build_parser(), command)._actions
        for flag in action.option_strings
    }
    options = list(setting_options())
    assert {option.path for option in options} == _fields()
    for option in options:
        described = option.field.description
        assert described and actions[option.flag].help.startswith(described.replace("%", "%%"))


def test_each_option_sets_its_field_nested_or_not() -> None:
    args = _build_parser().parse_args(
        [
            "run",
            "model.onnx",
            "probes",
            "--tests",
            "cascading,data",
            "--memory-budget",
            "512",
            "--archive-all-draws",
            "--size",
            "32",
            "24",
            "--mean",
            "0.5",
            "0.4",
            "0.3",
            "--layout",
            "NHWC",
            "--train-batch-size",
            "8",
            "--optimizer",
            "sgd",
            "--metric",
            "ssim",
            "--conversion-rtol",
            "0.01",
        ]
    )
    settings = _settings(args)
    assert settings.tests == [RandomizationTest.cascading, RandomizationTest.data]
    assert settings.memory_budget_mib == 512 and settings.archive_all_draws
    assert settings.preprocessing.size == (32, 24) and settings.preprocessing.mean == [0.5, 0.4, 0.3]
    assert settings.preprocessing.layout is Layout.nhwc
    assert settings.training.batch_size == 8 and settings.training.optimizer is Optimizer.sgd
    assert settings.verdict.metric is Metric.ssim and settings.conversion_rtol == 0.01
    untouched = AuditSettings()
    assert (
        settings.batch_size == untouched.batch_size and settings.training.models == untouched.training.models
    )


def test_options_override_a_settings_file_section_by_field(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "settings.json"
    path.write_text('{"draws": 5, "verdict": {"threshold": 0.3}, "training": {"max_epochs": 7}}')
    args = _build_parser().parse_args(
        ["run", "m.onnx", "p", "--settings", str(path), "--metric", "hog", "--draws", "4"]
    )
    settings = _settings(args)
    assert settings.draws == 4 and settings.verdict.threshold == 0.3 and settings.verdict.metric is Metric.hog
    assert settings.training.max_epochs == 7
