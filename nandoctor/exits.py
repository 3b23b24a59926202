"""How a command ends: the contract's exit codes, and what stdout and ``--out`` hold on each.

Every exit of a command goes through :func:`guarded`. A usage error is one line and exit 2, an
interrupt exit 130, any other exception ours (one line naming where, exit 3). With ``--format
json`` stdout still holds one object (``"verdict": "error"``, contract 0.3), and ``smoke
--format junit`` one JUnit XML with an ``<error>``: a CI step that reads or uploads the output
finds it on every exit, not only on a finished run.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import typer

from nandoctor import __version__
from nandoctor.descriptors import Descriptors, user_output_to_stderr
from nandoctor.distributed import label, reporting_rank
from nandoctor.errors import UsageError


@dataclass
class Exits:
    """What a command's error exit prints: its ``--format``, its spec, its ``--out`` file."""

    fmt: str = "text"
    spec: Optional[str] = None
    out: Optional[Path] = None
    inputs: list[Path] = field(default_factory=list)  # files the command reads: never written
    emitted: bool = False  # stdout already holds the command's output: no second object
    stdout: object = None
    descriptors: Optional[Descriptors] = None  # descriptor 1 points at stderr while the user's code may run

    def emit(self, text: str) -> None:
        """Print the command's output on the real stdout (inside the guard, prints go to stderr);
        under torchrun only rank 0 prints it."""
        if not reporting_rank():
            self.emitted = True
            return
        with self.descriptors.ours() if self.descriptors is not None else nullcontext():
            typer.echo(text, file=self.stdout)  # type: ignore[arg-type]
        self.emitted = True


def fail(message: str, code: int = 2) -> None:
    typer.echo(label(f"nandoctor: error: {message}"), err=True)
    raise typer.Exit(code)


@contextmanager
def guarded(
    debug: bool = False, fmt: str = "text", spec: Optional[str] = None, out: Optional[Path] = None
) -> Iterator[Exits]:
    """The contract's exits around a command's body; yields the :class:`Exits` whose ``emit`` prints.

    A UsageError is exit 2; Ctrl-C exit 130; any other exception is ours: exit 3 (--debug adds
    the traceback, never changes the code). The user's code runs inside too, with its prints sent
    to stderr: stdout carries only our output.
    """
    exits = Exits(fmt=fmt, spec=spec, out=out, inputs=spec_file(spec), stdout=sys.stdout)
    try:
        try:
            with user_output_to_stderr() as exits.descriptors:
                yield exits
        finally:
            exits.descriptors = None  # its saved descriptor is closed: plain prints again
    except UsageError as exc:
        if debug:
            _print_traceback()
        _error_exit(exits, "usage", str(exc), 2)
    except KeyboardInterrupt:
        typer.echo("nandoctor: interrupted; nothing was changed", err=True)
        _error_output(exits, "interrupted", "interrupted (Ctrl-C)")
        raise typer.Exit(130)
    except typer.Exit:
        raise
    except Exception as exc:
        if debug:  # the traceback, and still exit 3: a traceback never exits 1 ("unhealthy")
            _print_traceback()
        from nandoctor.errors import describe

        _error_exit(
            exits,
            "internal",
            f"internal error in nandoctor ({_where_raised(exc)}): {describe(exc)}; run with --debug for the traceback",
            3,
        )


def _error_exit(exits: Exits, kind: str, message: str, code: int) -> None:
    typer.echo(label(f"nandoctor: error: {message}"), err=True)
    _error_output(exits, kind, message)
    raise typer.Exit(code)


def error_report(spec: Optional[str], kind: str, message: str) -> dict:
    """The contract's object for an exit without a report (``"verdict": "error"``)."""
    return {
        "nandoctor_version": __version__,
        "spec": spec,
        "verdict": "error",
        "error": {"kind": kind, "message": message},
    }


def _error_output(exits: Exits, kind: str, message: str) -> None:
    """The one JSON object (or JUnit XML) of an error exit, on stdout and in ``--out`` when it is safe."""
    if exits.emitted or exits.fmt not in ("json", "junit") or not reporting_rank():
        return
    if exits.fmt == "json":
        from nandoctor.render.common import render_json

        text = render_json(error_report(exits.spec, kind, message))
    else:
        from nandoctor.render.junit import render_junit_error

        text = render_junit_error(exits.spec, kind, message)
    exits.emit(text)
    if exits.out is not None and _problem_writing(exits.out, exits.inputs) is None:
        write_output(exits.out, text)


def _print_traceback() -> None:
    import traceback

    traceback.print_exc(file=sys.stderr)


def _where_raised(exc: BaseException) -> str:
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "nandoctor" in Path(f.filename).parts]
    frame = frames[-1] if frames else None
    return f"{Path(frame.filename).name}:{frame.lineno}" if frame else type(exc).__name__


def spec_file(spec: Optional[str]) -> list[Path]:
    """The file a ``path/to/file.py:function`` SPEC reads (none for a module path)."""
    if not spec:
        return []
    from nandoctor.spec import _is_file_target, split_spec

    try:
        target, _ = split_spec(spec)
    except UsageError:
        return []
    return [Path(target)] if _is_file_target(target) else []


def _problem_writing(path: Path, inputs: Iterable[Path]) -> Optional[str]:
    if path.is_dir():
        return f"{path} is a folder: give a file name to write to"
    if not path.parent.exists():
        return f"cannot write {path}: the folder {path.parent} does not exist"
    resolved = path.resolve()
    for source in inputs:
        if Path(source).resolve() == resolved:
            return f"{path} is an input of this command ({source}): give another file to write to"
    return None


def check_writable(*paths: Optional[Path], inputs: Iterable[Path] = (), exits: Optional[Exits] = None) -> None:
    """Refuse an output path that cannot be written, or that is one of the command's own inputs,
    before anything runs (not after the whole run)."""
    inputs = [Path(p) for p in inputs]
    if exits is not None:  # the spec's file is an input of every command that has one
        exits.inputs = inputs = exits.inputs + inputs
    for path in paths:
        problem = None if path is None else _problem_writing(path, inputs)
        if problem:
            raise UsageError(problem)


def write_output(path: Optional[Path], text: str) -> None:
    """Write ``text`` to ``path``; a failure is said on stderr, and the report is printed anyway.
    Under torchrun only rank 0 writes: the ranks hold the same merged report."""
    if path is None or not reporting_rank():
        return
    try:
        path.write_text(text + "\n")
    except OSError as exc:
        typer.echo(f"nandoctor: error: could not write {path}: {exc.strerror or exc}", err=True)
