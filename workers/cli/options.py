"""The audit's command-line options, generated from ``AuditSettings``: each field (and each field of its
nested sections) is an option named after it, typed after its annotation, with the field's description
and default as its help. A new setting is one edit, the field; only a few flags keep an older name.
"""

import argparse
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from workers.core.audit_settings import AuditSettings

# flags named otherwise than their field: shorter, or kept apart from a top-level field of the same name
FLAGS = {
    ("memory_budget_mib",): "--memory-budget",
    ("training", "batch_size"): "--train-batch-size",
    ("training", "models"): "--train-models",
    ("training", "max_models"): "--max-train-models",
}
METAVARS = {("memory_budget_mib",): "MIB", ("preprocessing", "size"): ("H", "W")}
CHOICES = {("preprocessing", "channels"): [1, 3]}  # refused before torch loads, not when the probes are read
NOTES = {  # what the command line adds to a field's meaning
    ("methods",): "'saliency-audit methods' lists them.",
    ("tests",): "With --twin or --train-data and no --tests: cascading, independent and data.",
}
DATA_TEST = "training"  # the section whose options join the data randomization test's group
DATA_TEST_FIELDS = {("verdict", "retrain_gap")}


@dataclass(frozen=True)
class SettingOption:
    path: tuple[str, ...]  # the field's place in AuditSettings
    field: FieldInfo

    @property
    def flag(self) -> str:
        return FLAGS.get(self.path, "--" + self.path[-1].replace("_", "-"))

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")

    @property
    def in_data_test(self) -> bool:
        return self.path[0] == DATA_TEST or self.path in DATA_TEST_FIELDS


def setting_options(
    model: type[BaseModel] = AuditSettings, prefix: tuple[str, ...] = ()
) -> Iterator[SettingOption]:
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from setting_options(field.annotation, (*prefix, name))
        else:
            yield SettingOption((*prefix, name), field)


def add_setting_options(parser: argparse.ArgumentParser, data_test: argparse._ArgumentGroup) -> None:
    for option in setting_options():
        target = data_test if option.in_data_test else parser
        kind = _kind(option.field.annotation)
        kwargs = _argument(kind)
        if option.path in METAVARS:
            kwargs["metavar"] = METAVARS[option.path]
        if option.path in CHOICES:
            kwargs["choices"] = CHOICES[option.path]
        text = " ".join(filter(None, [_help(option.field, kind), NOTES.get(option.path)]))
        target.add_argument(option.flag, dest=option.dest, help=text, **kwargs)


def setting_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the command line gives, nested as in ``AuditSettings``."""
    overrides: dict[str, Any] = {}
    for option in setting_options():
        value = getattr(args, option.dest)
        if value is not None:
            section = overrides
            for name in option.path[:-1]:
                section = section.setdefault(name, {})
            section[option.path[-1]] = value
    return overrides


def _kind(annotation: Any) -> Any:
    """The annotation without ``None`` and without its constraints (``Annotated``)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _kind(annotation)
    if origin is typing.Annotated:
        return _kind(typing.get_args(annotation)[0])
    if origin in (list, tuple):
        return origin[tuple(_kind(a) for a in typing.get_args(annotation) if a is not Ellipsis)]
    return annotation


def _argument(kind: Any) -> dict[str, Any]:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is bool:
        return {"action": "store_true", "default": None}
    if isinstance(kind, type) and issubclass(kind, Enum):
        return {"choices": [member.value for member in kind]}
    if origin is list and isinstance(args[0], type) and issubclass(args[0], Enum):
        return {"type": _comma_separated, "metavar": "NAME,..."}
    if origin is list:
        return {"type": args[0], "nargs": "+"}
    if origin is tuple:
        return {"type": args[0], "nargs": len(args)}
    return {"type": kind}


def _comma_separated(text: str) -> list[str]:
    """Names as given: the settings' validation says which it does not know."""
    return text.split(",")


def _help(field: FieldInfo, kind: Any) -> str:
    text = (field.description or "").replace("%", "%%")
    args = typing.get_args(kind)
    if args and isinstance(args[0], type) and issubclass(args[0], Enum):
        text += f" Comma-separated, of: {', '.join(member.value for member in args[0])}."
    default = field.get_default(call_default_factory=True)
    if default is None or default == []:
        return text
    if isinstance(default, list):
        default = ",".join(str(getattr(item, "value", item)) for item in default)
    return f"{text} (default: {getattr(default, 'value', default)})"
