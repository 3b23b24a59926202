"""The CLI's choices and the options several commands share (typer only: ``--help`` stays light)."""

from __future__ import annotations

from enum import Enum

import typer

from nandoctor.errors import UsageError


class Format(str, Enum):
    text = "text"
    json = "json"


class ReportFormat(str, Enum):
    text = "text"
    json = "json"
    markdown = "markdown"


class SmokeFormat(str, Enum):
    text = "text"
    json = "json"
    markdown = "markdown"
    junit = "junit"


class FailOn(str, Enum):
    info = "info"
    warning = "warning"
    critical = "critical"
    never = "never"


class EmitNorm(str, Enum):
    yaml = "yaml"
    python = "python"


SPEC_HELP = "path/to/file.py:function or package.module:function"
SET_HELP = "key=value passed to the build function (repeatable)"


# options several commands share, declared once
SPEC = typer.Argument(..., help=SPEC_HELP)
SET = typer.Option([], "--set", help=SET_HELP)
FAIL_ON = typer.Option(FailOn.critical, "--fail-on", help="exit 1 when a finding is at least this severe")
BATCHES = typer.Option(None, "--batches", help="batches to read from data and reuse")
SETTINGS_FILE = typer.Option(None, "--settings", help="YAML file of probe settings (see configs/probes.yaml)")
SEED = typer.Option(None, "--seed", help="seed for the build function and the probes (default 0)")
DEBUG = typer.Option(False, "--debug", help="show tracebacks")


def parse_budget(text: str) -> float:
    """``60s``, ``2m``, ``90`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    value, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        seconds = float(value) * units[unit]
    except ValueError as exc:
        raise UsageError(f"--budget takes seconds like 60s or 2m, got {text!r}") from exc
    if seconds <= 0:
        raise UsageError(f"--budget must be positive, got {text!r}")
    return seconds
