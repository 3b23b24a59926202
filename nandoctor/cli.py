"""The ``nandoctor`` command. Heavy imports (torch, pandas) happen inside the commands."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from nandoctor import __version__
from nandoctor import cli_options as opt
from nandoctor.errors import UsageError
from nandoctor.exits import check_writable, fail, guarded, spec_file, write_output

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Find why a PyTorch training run goes NaN or refuses to learn.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"nandoctor {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Find why a PyTorch training run goes NaN or refuses to learn."""


def _diagnosis(
    spec: str,
    overrides: list[str],
    settings_values: dict,
    settings_file: Optional[str],
    probes: list[str],
    skip: list[str],
    debug: bool,
    config: Optional[str] = None,
    budget_s: Optional[float] = None,
    quick: bool = False,
):
    """The API's diagnose; returns (report, config document, config text)."""
    from nandoctor import api

    document = text = None
    if config is not None:
        from nandoctor.config import load_config, plain

        document, text = load_config(config)
    options = dict(probes=probes, skip=skip, quick=quick, settings=settings_file, budget_s=budget_s, debug=debug)
    config_values = None if document is None else plain(document)
    report = api.diagnose(spec, overrides=overrides, config=config_values, **options, **settings_values)
    return report, document, text


@app.command()
def diagnose(
    spec: str = opt.SPEC,
    set_: List[str] = opt.SET,
    fmt: opt.ReportFormat = typer.Option(
        opt.ReportFormat.text, "--format", help="text for a terminal, json for scripts, markdown for PRs"
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="also write the JSON report to this file"),
    fail_on: opt.FailOn = opt.FAIL_ON,
    probe: List[str] = typer.Option([], "--probe", help="run only these probes (repeatable)"),
    skip: List[str] = typer.Option([], "--skip", help="skip these probes (repeatable)"),
    batches: Optional[int] = opt.BATCHES,
    settings_file: Optional[str] = opt.SETTINGS_FILE,
    seed: Optional[int] = opt.SEED,
    quick: bool = typer.Option(False, "--quick", help="skip the training-dynamics sweep and the training steps"),
    steps: Optional[int] = typer.Option(
        None,
        "--steps",
        help="train your own configuration this many steps first and trace a step that goes NaN/Inf (default 40)",
    ),
    amp_what_if: Optional[str] = typer.Option(
        None, "--amp-what-if", help="for a float32 spec: check fp16 or bf16 as a what-if"
    ),
    config: Optional[str] = typer.Option(None, "--config", help="the training config (YAML) whose keys the fixes name"),
    write_fixed: Optional[Path] = typer.Option(
        None, "--write-fixed", help="write the config with the fixes applied here"
    ),
    in_place: bool = typer.Option(False, "--in-place", help="allow writing the fixes into the --config file itself"),
    debug: bool = opt.DEBUG,
) -> None:
    """Load the spec, run the probes and print a ranked root-cause report."""
    with guarded(debug, fmt.value, spec, out) as exits:
        if (write_fixed is not None or in_place) and config is None:
            raise UsageError("--write-fixed and --in-place need --config FILE (the YAML to patch)")
        check_writable(out, inputs=[Path(p) for p in (config, settings_file) if p], exits=exits)
        check_writable(write_fixed, inputs=spec_file(spec) + [Path(p) for p in (settings_file,) if p])
        if write_fixed is not None and not in_place and Path(config).resolve() == write_fixed.resolve():
            raise UsageError(f"--write-fixed would overwrite the input config {config}: pass --in-place to allow it")
        report, document, text = _diagnosis(
            spec,
            set_,
            {"batches": batches, "seed": seed, "amp_what_if": amp_what_if, "steps": steps},
            settings_file,
            probe,
            skip,
            debug,
            config,
            quick=quick,
        )
        if document is not None and (write_fixed is not None or in_place):
            from nandoctor.config import apply_fixes
            from nandoctor.config import write_fixed as write

            _, missing = apply_fixes(document, report.findings)
            target = str(write_fixed) if write_fixed is not None else config
            diff = write(document, text, config, target, in_place)
            typer.echo(diff or f"nandoctor: no fix applies to {config}; {target} is a copy", err=True)
            for key in missing:
                typer.echo(f"nandoctor: {config} has no key {key}: add it (see the finding's advice)", err=True)
        exits.emit(report.render(fmt.value))
        write_output(out, report.to_json())
        code = report.exit_code(fail_on.value)
    raise typer.Exit(code)


@app.command()
def smoke(
    spec: str = opt.SPEC,
    set_: List[str] = opt.SET,
    budget: str = typer.Option("60s", "--budget", help="time budget: probes that would start later are skipped"),
    fmt: opt.SmokeFormat = typer.Option(
        opt.SmokeFormat.text, "--format", help="text (one line), json, markdown or junit"
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="also write the output to this file"),
    fail_on: opt.FailOn = opt.FAIL_ON,
    dynamics: bool = typer.Option(False, "--dynamics", help="also run the training-dynamics sweep"),
    batches: Optional[int] = opt.BATCHES,
    debug: bool = opt.DEBUG,
) -> None:
    """CI check: the quick probes under a time budget, one summary line.

    Exit 0 healthy, 1 a finding at or above --fail-on, 2 bad input, 3 incomplete (the budget ran
    out or a probe failed inside nandoctor), 130 interrupted.
    """
    start = time.monotonic()
    with guarded(debug, fmt.value, spec, out) as exits:
        check_writable(out, exits=exits)
        seconds = opt.parse_budget(budget)
        report, *_ = _diagnosis(
            spec, set_, {"batches": batches}, None, [], [], debug, budget_s=seconds, quick=not dynamics
        )
        from nandoctor.render.junit import render_junit
        from nandoctor.render.text import summary_line

        took = time.monotonic() - start
        text = {
            "text": lambda: summary_line(report.to_dict(), took),
            "json": report.to_json,
            "markdown": lambda: report.render("markdown"),
            "junit": lambda: render_junit(report.to_dict(), fail_on.value, took),
        }[fmt.value]()
        exits.emit(text)
        write_output(out, text)
        if fmt != opt.SmokeFormat.text:
            typer.echo(summary_line(report.to_dict(), took), err=True)
        code = report.exit_code(fail_on.value)
    raise typer.Exit(code)


@app.command()
def explain(code: Optional[str] = typer.Argument(None, help="a finding code; omit it to list them all")) -> None:
    """What a finding code means, why it breaks training, an example, and the fix."""
    from nandoctor.codes import CODES

    if code is None:
        width = max(len(c) for c in CODES)
        for doc in sorted(CODES.values(), key=lambda d: d.stage):
            typer.echo(f"{doc.code:<{width}}  {doc.meaning}")
        return
    doc = CODES.get(code.strip().lower().replace("-", "_"))
    if doc is None:
        import difflib

        close = difflib.get_close_matches(code, list(CODES), n=3)
        fail(
            f"unknown code {code!r}"
            + (f" (did you mean {', '.join(close)}?)" if close else " (nandoctor explain lists them)")
        )
        return
    typer.echo(
        "\n".join(
            [
                doc.code,
                "",
                f"What it means:  {doc.meaning}",
                f"Why it breaks:  {doc.why}",
                f"Example:        {doc.example}",
                f"Fix:            {doc.fix}",
            ]
        )
    )


@app.command("lr-sweep")
def lr_sweep(
    spec: str = opt.SPEC,
    set_: List[str] = opt.SET,
    lrs: Optional[str] = typer.Option(
        None, "--lrs", help="comma-separated rates (default: two decades each way of the spec's lr)"
    ),
    steps: Optional[int] = typer.Option(
        None,
        "--steps",
        help="training steps per rate that reaches the end "
        "(default: planned from the model's size, as diagnose plans them)",
    ),
    settings_file: Optional[str] = opt.SETTINGS_FILE,
    plot: Optional[Path] = typer.Option(None, "--plot", help="write loss and gradient-norm curves to this PNG"),
    fmt: opt.Format = typer.Option(opt.Format.text, "--format", help="text table or json"),
    out: Optional[Path] = typer.Option(None, "--out", help="also write the JSON result to this file"),
    batches: Optional[int] = opt.BATCHES,
    seed: Optional[int] = typer.Option(None, "--seed", help="seed for the build function and every run (default 0)"),
    debug: bool = opt.DEBUG,
) -> None:
    """Train a few steps at each learning rate from the same start; table and recommendation."""
    with guarded(debug, fmt.value, spec, out) as exits:
        from nandoctor import api

        check_writable(out, plot, inputs=[Path(p) for p in (settings_file,) if p], exits=exits)
        api.SweepReport.check_plot_path(plot)
        result = api.lr_sweep(
            spec, overrides=set_, lrs=lrs, steps=steps, batches=batches, seed=seed, settings=settings_file
        )
        # the results first: a plot that fails loses nothing
        exits.emit(result.to_json() if fmt == opt.Format.json else str(result))
        write_output(out, result.to_json())
        if plot is not None:
            result.plot(plot)
            typer.echo(f"nandoctor: wrote {plot}", err=True)
    if result.user_diverges:  # the user's own rate diverges: unhealthy, like a critical finding
        raise typer.Exit(1)


@app.command()
def replay(
    capture: Path = typer.Argument(..., help="a capture file written by nandoctor.Guard"),
    spec: Optional[str] = typer.Option(None, "--spec", help=opt.SPEC_HELP + " (default: the one the capture records)"),
    set_: List[str] = opt.SET,
    fmt: opt.Format = typer.Option(opt.Format.text, "--format", help="text for a terminal, json for scripts"),
    out: Optional[Path] = typer.Option(None, "--out", help="also write the JSON report to this file"),
    fail_on: opt.FailOn = opt.FAIL_ON,
    seed: Optional[int] = opt.SEED,
    trust_spec: bool = typer.Option(
        False, "--trust-spec", help="run the spec the capture records (a file, shown first)"
    ),
    debug: bool = opt.DEBUG,
) -> None:
    """Re-run a guard's capture to its failing step and diagnose that step."""
    with guarded(debug, fmt.value, spec, out) as exits:
        from nandoctor.guard.replay import replay as replay_capture
        from nandoctor.settings import load_settings

        check_writable(out, inputs=[capture], exits=exits)
        report = replay_capture(
            str(capture),
            spec,
            set_,
            load_settings(None, {"seed": seed}),
            progress=lambda m: typer.echo(m, err=True),
            debug=debug,
            trust_spec=trust_spec,
        )
        exits.emit(report.render(fmt.value))
        write_output(out, report.to_json())
        code = report.exit_code(fail_on.value)
    raise typer.Exit(code)


@app.command()
def scan(
    spec: str = opt.SPEC,
    set_: List[str] = opt.SET,
    max_batches: Optional[int] = typer.Option(
        None, "--max-batches", help="stop after this many batches (default: all of data)"
    ),
    with_backward: bool = typer.Option(
        False, "--with-backward", help="also run the backward pass and check the gradients"
    ),
    extreme_factor: float = typer.Option(
        1000.0,
        "--extreme-factor",
        help="flag a sample whose largest |value| is this many times an input's typical largest value",
    ),
    fmt: opt.Format = typer.Option(opt.Format.text, "--format", help="text for a terminal, json for scripts"),
    out: Optional[Path] = typer.Option(None, "--out", help="also write the JSON result to this file"),
    fail_on: opt.FailOn = opt.FAIL_ON,
    seed: Optional[int] = typer.Option(None, "--seed", help="seed for the build function (default 0)"),
    debug: bool = opt.DEBUG,
) -> None:
    """Every batch of data through the model: bad inputs, ids, labels or loss by batch and sample.

    Ctrl-C keeps what was found.
    """
    with guarded(debug, fmt.value, spec, out) as exits:
        from nandoctor.render.scan import ProgressBar
        from nandoctor.scan import run_scan

        check_writable(out, exits=exits)
        if (max_batches is not None and max_batches < 1) or not extreme_factor > 1:
            raise UsageError("--max-batches must be at least 1 and --extreme-factor above 1")
        from nandoctor.distributed import process_group, reporting_rank
        from nandoctor.spec import load

        with process_group():  # under torchrun each rank scans its share; rank 0 prints them all
            setup = load(spec, set_, seed or 0)
            bar = ProgressBar(sys.stderr) if reporting_rank() else (lambda *progress: None)
            result = {
                "nandoctor_version": __version__,
                "spec": spec,
                **run_scan(setup, max_batches, with_backward, extreme_factor, bar),
            }
        from nandoctor.render.common import render_json
        from nandoctor.render.scan import render_scan

        exits.emit(render_json(result) if fmt == opt.Format.json else render_scan(result))
        write_output(out, render_json(result))
    if result["stopped"]:  # the user's data raised: the scan is incomplete, what it found stands
        stopped = result["stopped"]
        typer.echo(f"nandoctor: reading batch {stopped['batch']} of data raised {stopped['error']}", err=True)
    if result["interrupted"]:
        typer.echo("nandoctor: interrupted; the findings above cover the batches scanned so far", err=True)
        raise typer.Exit(130)
    from nandoctor.results import exit_code

    raise typer.Exit(
        exit_code((f["severity"] for f in result["findings"]), result["stopped"] is not None, fail_on.value)
    )


@app.command("feature-stats")
def feature_stats(
    paths: List[str] = typer.Argument(..., help=".parquet/.csv/.tsv files, folders of them, or globs"),
    columns: Optional[str] = typer.Option(None, "--columns", help="comma-separated columns to analyse"),
    limit_rows: Optional[int] = typer.Option(None, "--limit-rows", help="stop after this many rows"),
    fmt: opt.Format = typer.Option(opt.Format.text, "--format", help="text table or json"),
    emit_norm: Optional[opt.EmitNorm] = typer.Option(
        None, "--emit-norm", help="print per-feature mean/std as yaml or python"
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="also write the JSON result to this file"),
    fail_on: opt.FailOn = typer.Option(
        opt.FailOn.never,
        "--fail-on",
        help="exit 1 when a column has a flag at least this severe (NaN, mixed "
        "types: critical; not normalized, ids: warning; heavy tail, constant: info)",
    ),
) -> None:
    """Per-column statistics and flags (not normalized, heavy tail, ids, NaN) for training data."""
    with guarded(fmt=fmt.value if emit_norm is None else "text", out=out) as exits:
        from nandoctor import api
        from nandoctor.featurestats.files import discover, flagged_at_or_above

        check_writable(out, inputs=discover(paths) if out is not None else [], exits=exits)
        result = api.feature_stats(paths, columns=columns, limit_rows=limit_rows)
        exits.emit(result.render(fmt.value, emit_norm.value if emit_norm else None))
        write_output(out, result.to_json())
    flagged = flagged_at_or_above(result.to_dict(), fail_on.value)
    if flagged:
        typer.echo(
            f"nandoctor: {len(flagged)} column(s) flagged at or above {fail_on.value}: {', '.join(flagged[:10])}",
            err=True,
        )
        raise typer.Exit(1)


def main() -> None:
    from nandoctor.distributed import ranks_leave_together

    try:
        with ranks_leave_together():
            app()
    except KeyboardInterrupt:  # outside a command (while parsing): nothing ran yet
        typer.echo("nandoctor: interrupted; nothing was changed", err=True)
        sys.exit(130)
