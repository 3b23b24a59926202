"""Errors that end a run with exit code 2 and one clear line (CONTRACT.md §3)."""


class UsageError(Exception):
    """Bad input from the user: a bad SPEC, a missing file, a build function that raises.

    The CLI prints ``nandoctor: error: <message>`` on stderr and exits 2, without a
    traceback unless ``--debug`` is given.
    """
