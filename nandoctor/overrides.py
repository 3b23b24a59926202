"""``--set key=value``: the keyword arguments a build function gets, parsed as the contract says."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Union

from nandoctor.errors import UsageError

#: What a caller may pass as a build function's arguments: a mapping, or ``["key=value", ...]``.
Overrides = Union[Mapping[str, Any], Sequence[str], None]


def parse_value(text: str, float_wanted: bool = False) -> Any:
    """A ``--set`` value: numbers as Python reads them, anything else as a YAML scalar.

    A word Python reads as a float (``nan``, ``inf``) stays a string (``--set mode=nan``) unless
    ``float_wanted``: the build function's default for that parameter is a float.
    """
    for number in (int, float):
        try:
            value = number(text)
        except ValueError:
            continue
        return value if float_wanted or any(c.isdigit() for c in text) else text
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(pairs: Overrides, float_parameters: Iterable[str] = ()) -> dict[str, Any]:
    """``["steps=3", "lr=1e-3"]`` (or one such string) -> ``{"steps": 3, "lr": 0.001}``; a mapping as it is.
    ``float_parameters`` (the build's float defaults) read ``inf``/``nan`` as numbers, else they stay words."""
    if isinstance(pairs, Mapping):
        bad = [k for k in pairs if not (isinstance(k, str) and k.isidentifier())]
        if bad:
            raise UsageError(f"overrides must be keyword names, got {bad!r}")
        return dict(pairs)
    kwargs: dict[str, Any] = {}
    floats = set(float_parameters)
    for pair in [pairs] if isinstance(pairs, str) else pairs or []:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UsageError(f"--set takes key=value with a Python identifier as key, got {pair!r}")
        kwargs[key] = parse_value(value, key in floats)
    return kwargs
