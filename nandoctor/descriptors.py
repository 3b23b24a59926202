"""While a command runs the user's code, file descriptor 1 points at stderr.

``redirect_stdout`` only catches Python's ``print``: ``os.system``, a subprocess without capture
and ``os.write(1, ...)`` write to the descriptor itself, and would land inside the one JSON object
``--format json`` prints. The descriptor points at stderr for the run; nandoctor's own output
takes it back for the time it writes (:meth:`Descriptors.ours`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout


class Descriptors:
    """Descriptor 1 as it was (``saved``) while it points at stderr."""

    def __init__(self, saved: int | None, stdout_fd: int | None, stderr_fd: int | None):
        self.saved, self.stdout_fd, self.stderr_fd = saved, stdout_fd, stderr_fd

    @contextmanager
    def ours(self) -> Iterator[None]:
        """Descriptor 1 back on the real stdout while nandoctor prints its own output."""
        if self.saved is None:
            yield
            return
        _flush()
        os.dup2(self.saved, self.stdout_fd)
        try:
            yield
        finally:
            _flush()
            os.dup2(self.stderr_fd, self.stdout_fd)


@contextmanager
def user_output_to_stderr() -> Iterator[Descriptors]:
    """Python's stdout and descriptor 1 both go to stderr inside; both come back after."""
    try:
        stdout_fd, stderr_fd = sys.__stdout__.fileno(), sys.__stderr__.fileno()
    except (AttributeError, OSError, ValueError):  # no real descriptors (an embedding host): Python level only
        stdout_fd = stderr_fd = None
    saved = None
    if stdout_fd is not None:
        _flush()
        saved = os.dup(stdout_fd)
        os.dup2(stderr_fd, stdout_fd)
    try:
        with redirect_stdout(sys.stderr):
            yield Descriptors(saved, stdout_fd, stderr_fd)
    finally:
        if saved is not None:
            _flush()
            os.dup2(saved, stdout_fd)
            os.close(saved)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
