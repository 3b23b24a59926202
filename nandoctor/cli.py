"""The ``nandoctor`` command. Heavy imports (torch, pandas) happen inside the commands."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from nandoctor import __version__
from nandoctor.errors import UsageError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Find why a PyTorch training run goes NaN or refuses to learn.")

FAIL_LEVELS = {"info": 0, "warning": 1, "critical": 2, "never": 99}


class Format(str, Enum):
    text = "text"
    json = "json"


class FailOn(str, Enum):
    info = "info"
    warning = "warning"
    critical = "critical"
    never = "never"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"nandoctor {__version__}")
        raise typer.Exit()


@app.callback()
def root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """Find why a PyTorch training run goes NaN or refuses to learn."""


def fail(message: str) -> None:
    typer.echo(f"nandoctor: error: {message}", err=True)
    raise typer.Exit(2)


def exit_code(findings: list[dict], fail_on: str) -> int:
    threshold = FAIL_LEVELS[fail_on]
    return int(any(FAIL_LEVELS[f["severity"]] >= threshold for f in findings))


@app.command()
def diagnose(
    spec: str = typer.Argument(..., help="path/to/file.py:function or package.module:function"),
    set_: List[str] = typer.Option([], "--set", help="key=value passed to the build function (repeatable)"),
    fmt: Format = typer.Option(Format.text, "--format", help="text for a terminal, json for scripts"),
    out: Optional[Path] = typer.Option(None, "--out", help="also write the JSON report to this file"),
    fail_on: FailOn = typer.Option(FailOn.critical, "--fail-on", help="exit 1 when a finding is at least this severe"),
    probe: List[str] = typer.Option([], "--probe", help="run only these probes (repeatable)"),
    skip: List[str] = typer.Option([], "--skip", help="skip these probes (repeatable)"),
    batches: Optional[int] = typer.Option(None, "--batches", help="batches to read from data and reuse"),
    settings_file: Optional[str] = typer.Option(None, "--settings", help="YAML file of probe settings (see configs/probes.yaml)"),
    seed: Optional[int] = typer.Option(None, "--seed", help="seed for the build function and the probes (default 0)"),
    quick: bool = typer.Option(False, "--quick", help="skip the training-dynamics sweep"),
    amp_what_if: Optional[str] = typer.Option(None, "--amp-what-if", help="for a float32 spec: check fp16 or bf16 as a what-if"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
) -> None:
    """Load the spec, run the probes and print a ranked root-cause report."""
    try:
        from nandoctor.render import render, render_json
        from nandoctor.runner import build_report, run_probes, select_probes
        from nandoctor.settings import load_settings
        from nandoctor.spec import load_setup

        settings = load_settings(settings_file, {"batches": batches, "seed": seed, "amp_what_if": amp_what_if})
        probes = select_probes(probe, skip + (["dynamics"] if quick else []))
        import torch

        torch.manual_seed(settings.seed)  # the same spec builds the same model: deterministic reports
        typer.echo(f"nandoctor: loading {spec}", err=True)
        setup = load_setup(spec, set_)
        report = build_report(spec, run_probes(setup, settings, probes, debug=debug))
    except UsageError as exc:
        if debug:
            raise
        fail(str(exc))
        return
    if out is not None:
        out.write_text(render_json(report) + "\n")
    typer.echo(render(report, fmt.value))
    raise typer.Exit(exit_code(report["findings"], fail_on.value))


@app.command("lr-sweep")
def lr_sweep(
    spec: str = typer.Argument(..., help="path/to/file.py:function or package.module:function"),
    set_: List[str] = typer.Option([], "--set", help="key=value passed to the build function (repeatable)"),
    lrs: Optional[str] = typer.Option(None, "--lrs", help="comma-separated rates (default: two decades each way of the spec's lr)"),
    steps: int = typer.Option(30, "--steps", help="training steps per rate"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="write loss and gradient-norm curves to this PNG"),
    fmt: Format = typer.Option(Format.text, "--format", help="text table or json"),
    out: Optional[Path] = typer.Option(None, "--out", help="also write the JSON result to this file"),
    batches: Optional[int] = typer.Option(None, "--batches", help="batches to read from data and reuse"),
    seed: Optional[int] = typer.Option(None, "--seed", help="seed for the build function and every run (default 0)"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
) -> None:
    """Train a few steps at each learning rate from the same start; table and recommendation."""
    try:
        from nandoctor.lrsweep import parse_rates, plot_sweep, render_sweep, sweep_report
        from nandoctor.render import render_json
        from nandoctor.settings import load_settings
        from nandoctor.spec import load_setup

        if steps < 2:
            raise UsageError("--steps must be at least 2")
        rates = parse_rates(lrs)
        settings = load_settings(None, {"batches": batches, "seed": seed})
        import torch

        torch.manual_seed(settings.seed)
        typer.echo(f"nandoctor: loading {spec}", err=True)
        report = sweep_report(spec, load_setup(spec, set_), settings, rates, steps)
        if plot is not None:
            plot_sweep(report, str(plot))
            typer.echo(f"nandoctor: wrote {plot}", err=True)
    except UsageError as exc:
        if debug:
            raise
        fail(str(exc))
        return
    if out is not None:
        out.write_text(render_json(report) + "\n")
    typer.echo(render_json(report) if fmt == Format.json else render_sweep(report))


class EmitNorm(str, Enum):
    yaml = "yaml"
    python = "python"


@app.command("feature-stats")
def feature_stats(
    paths: List[str] = typer.Argument(..., help=".parquet/.csv/.tsv files, folders of them, or globs"),
    columns: Optional[str] = typer.Option(None, "--columns", help="comma-separated columns to analyse"),
    limit_rows: Optional[int] = typer.Option(None, "--limit-rows", help="stop after this many rows"),
    fmt: Format = typer.Option(Format.text, "--format", help="text table or json"),
    emit_norm: Optional[EmitNorm] = typer.Option(None, "--emit-norm", help="print per-feature mean/std as yaml or python"),
    out: Optional[Path] = typer.Option(None, "--out", help="also write the JSON result to this file"),
) -> None:
    """Per-column statistics and flags (not normalized, heavy tail, ids, NaN) for training data."""
    try:
        from nandoctor.featurestats import analyse, unusable
        from nandoctor.render import render_json
        from nandoctor.render_features import render_features

        if limit_rows is not None and limit_rows < 1:
            raise UsageError("--limit-rows must be at least 1")
        wanted = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
        result = analyse(paths, wanted, limit_rows)
        problem = unusable(result)
        if problem:
            raise UsageError(problem)
    except UsageError as exc:
        fail(str(exc))
        return
    if out is not None:
        out.write_text(render_json(result) + "\n")
    typer.echo(render_features(result, fmt.value, emit_norm.value if emit_norm else None))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("nandoctor: interrupted", err=True)
        sys.exit(130)
