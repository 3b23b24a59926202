"""Errors that end a run with a clear line, and the one way we quote an exception."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user: a bad SPEC, a missing file, a build function that raises.

    The CLI prints ``nandoctor: error: <message>`` on stderr and exits 2, without a
    traceback unless ``--debug`` is given.
    """


class UserExit(RuntimeError):
    """The user's code called ``sys.exit()`` inside a build, a loss, a forward or a data loader.

    ``SystemExit`` would end nandoctor with the user's exit code and no report; as this error it
    is what any other exception of the user's code is: a usage error or a finding at its line.
    """

    @classmethod
    def of(cls, exc: SystemExit, what: str) -> "UserExit":
        return cls(f"{what} called sys.exit({exc.code!r})").with_traceback(exc.__traceback__)


class InternalError(Exception):
    """nandoctor itself failed (a bug of ours, never the user's): exit 3, the traceback with ``--debug``."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message ('' when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def describe(exc: BaseException) -> str:
    """``ValueError: first line of the message`` (just the type when there is no message)."""
    message = first_line(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
