"""Settings: every threshold, gathered from where it is declared, and the values of one run.

Each setting is declared by the module that reads it: the run's own (seed, batches) by the
context, the traced pass's by ``measure.trace``, the sweep's by ``sweep.limits``, and each
probe's on the probe. ``configs/probes.yaml`` is the table written out (a test keeps them
equal); ``--settings FILE`` overrides any of them. Two declarations of one name are a bug in
nandoctor, found when the table is gathered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nandoctor import context, probes
from nandoctor.errors import InternalError, UsageError, first_line
from nandoctor.findings import Setting
from nandoctor.measure import trace
from nandoctor.sweep import limits, stacked

_CHOICES = {"amp_what_if": ("", "fp16", "bf16")}


def declared() -> list[Setting]:
    """Every setting: the run's, the traced pass's, the sweep's, then each registered probe's."""
    table = [
        *context.RUN_SETTINGS,
        *trace.SETTINGS,
        *limits.SETTINGS,
        *stacked.SETTINGS,
        *(s for probe in probes.PROBES for s in probe.settings),
    ]
    names = [setting.name for setting in table]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise InternalError(f"settings declared twice: {', '.join(twice)}")
    return table


def _coerce(setting: Setting, value: Any) -> Any:
    if isinstance(setting.default, str):
        value = "" if value is None else value
        choices = _CHOICES.get(setting.name)
        if choices is not None and value not in choices:
            raise UsageError(
                f"setting {setting.name!r} must be one of {', '.join(c or 'empty' for c in choices)}, got {value!r}"
            )
        return str(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"setting {setting.name!r} must be a number, got {value!r}")
    if isinstance(setting.default, int) and isinstance(value, float) and not value.is_integer():
        raise UsageError(f"setting {setting.name!r} must be a whole number, got {value!r}")
    value = type(setting.default)(value)
    problem = setting.out_of_range(value)
    if problem:
        raise UsageError(f"setting {setting.name!r} must be {problem}, got {value!r}")
    return value


class Settings:
    """Read-only attribute access to every setting: ``settings.sweep_steps``."""

    def __init__(self, **values: Any):
        table = {s.name: s for s in declared()}
        unknown = sorted(set(values) - set(table))
        if unknown:
            raise UsageError(f"unknown settings: {', '.join(unknown)} (known: {', '.join(table)})")
        merged = {name: setting.default for name, setting in table.items()}
        merged.update({k: _coerce(table[k], v) for k, v in values.items()})
        object.__setattr__(self, "_values", merged)
        object.__setattr__(self, "_defaults", {name: setting.default for name, setting in table.items()})

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("settings are read-only: build new ones with replace()")

    def replace(self, **changes: Any) -> "Settings":
        return Settings(**dict(self._values, **changes))

    def is_default(self, name: str) -> bool:
        """The setting has its declared default (it was not asked for)."""
        return self._values[name] == self.__dict__["_defaults"][name]

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)


def load_settings(path: str | None, overrides: dict[str, Any] | None = None) -> Settings:
    """Defaults, then a YAML file's values, then explicit overrides (``--batches``)."""
    values: dict[str, Any] = {}
    if path:
        import yaml

        file = Path(path)
        if not file.is_file():
            raise UsageError(f"no such settings file: {path}")
        try:
            loaded = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:  # one line: where it broke, not PyYAML's multi-line dump
            mark = getattr(exc, "problem_mark", None)
            at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            problem = getattr(exc, "problem", None) or first_line(exc)
            raise UsageError(f"settings file {path} is not valid YAML{at}: {problem}") from exc
        if not isinstance(loaded, dict):
            raise UsageError(f"settings file {path} must hold a mapping")
        values.update(loaded)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return Settings(**values)


def settings_yaml() -> str:
    """``configs/probes.yaml``: every setting with its default and meaning."""
    lines = [
        "# Default probe settings of nandoctor (written from the probes' declarations by",
        "# scripts/write_probe_settings.py; a test keeps them equal).",
        "# Pass a copy with your own values: nandoctor diagnose SPEC --settings my_probes.yaml",
    ]
    table = declared()
    width = max(len(f"{s.name}: {_yaml_value(s.default)}") for s in table)
    for setting in table:
        entry = f"{setting.name}: {_yaml_value(setting.default)}"
        lines.append(f"{entry:<{width}}  # {setting.meaning}")
    return "\n".join(lines) + "\n"


def _yaml_value(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, float):
        text = repr(value)
        return text if "e" not in text or "." in text.split("e")[0] else text.replace("e", ".0e")
    return str(value)
