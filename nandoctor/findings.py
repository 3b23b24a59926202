"""Findings: the plain data every probe returns and every renderer reads; the declarations of codes and settings.

A code (:class:`CodeDoc`) and a threshold (:class:`Setting`) are declared by the module that
produces or reads them; the registry (``nandoctor.settings``, ``nandoctor.codes``) gathers them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import Enum, IntEnum
from typing import Any

SEVERITY_ORDER = ("info", "warning", "critical")
FAIL_LEVELS = {"info": 0, "warning": 1, "critical": 2, "never": 99}


class Severity(str, Enum):
    """How bad a finding is; the order is used by ``--fail-on`` and the ranking."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return SEVERITY_ORDER.index(self.value)


def at_or_above(severity: str, fail_on: str) -> bool:
    """Whether a finding of ``severity`` trips ``--fail-on fail_on``."""
    return FAIL_LEVELS[severity] >= FAIL_LEVELS[fail_on]


def is_finite(*values: float | None) -> bool:
    """All values are numbers and finite (None is not)."""
    return all(v is not None and math.isfinite(v) for v in values)


@dataclass(frozen=True)
class Where:
    """Where a finding points: names as ``named_modules()`` / ``named_parameters()`` give them.

    ``op`` is the torch/autograd op, ``source`` the user's ``file.py:line``, ``batch`` and
    ``sample`` the batch index in ``data`` and the sample inside it (findings about data), ``rank``
    the process whose data or weights it is about under ``torchrun`` (None in one process).
    """

    module: str | None = None
    component: str | None = None
    feature: str | None = None
    parameter: str | None = None
    op: str | None = None
    source: str | None = None
    batch: int | None = None
    sample: int | None = None
    rank: int | None = None  # the process rank under torchrun, for findings that differ by rank


@dataclass(frozen=True)
class Fix:
    """A suggested change: ``config`` maps dotted config keys to values; ``advice`` says why.

    ``verified`` is ``{"steps", "before", "after", "ok"}`` when a control re-ran the fix (contract
    §2, ``fix.verified``); None, and absent from the JSON, when nothing re-ran it.
    """

    config: dict[str, Any] = field(default_factory=dict)
    advice: str = ""
    verified: dict[str, Any] | None = None


@dataclass(frozen=True)
class Finding:
    """One diagnosed problem. Evidence holds plain numbers and strings, never tensors."""

    code: str
    severity: Severity
    title: str
    where: Where = field(default_factory=Where)
    evidence: dict[str, Any] = field(default_factory=dict)
    fix: Fix = field(default_factory=Fix)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["severity"] = self.severity.value
        if self.fix.verified is None:  # the contract's key is absent when nothing re-ran the fix
            del data["fix"]["verified"]
        return data


class Stage(IntEnum):
    """Where a code sits in the causal chain, cause first: what is wrong before training starts
    (devices, init, data) explains the forward pass, which explains the backward pass, which
    explains the dynamics. The ranking sorts by it, so a cause ranks above its symptoms."""

    DEVICES = 0
    INIT = 1
    DATA = 2
    INPUT_SCALE = 3
    FORWARD_ERROR = 4
    FORWARD_VALUES = 5
    PRECISION = 6
    ACTIVATION_SCALE = 7
    SATURATION = 8
    DEAD_UNITS = 9
    LOSS_VALUES = 10
    BACKWARD_VALUES = 11
    LOSS_BALANCE = 12
    GRADIENT_SCALE = 13
    GRADIENT_FLOW = 14
    CLIPPING = 15
    RATE_TOO_HIGH = 16
    RATE_TOO_LOW = 17
    NO_SIGNAL = 18


@dataclass(frozen=True)
class CodeDoc:
    """A finding code's documentation (``nandoctor explain CODE``) and its :class:`Stage`."""

    code: str
    stage: Stage
    meaning: str
    why: str
    example: str
    fix: str


@dataclass(frozen=True)
class Setting:
    """One tunable threshold: its name in ``--settings FILE``, its default and what it means.

    ``minimum`` is the least value that makes sense. Left out, the default's kind says it: a count
    (an int default of 1 or more) is at least 1, an int defaulting to 0 at least 0, and a positive
    float (a share, a factor, a threshold, seconds) stays above 0: a negative or zero count or
    threshold would make a run that silently checks nothing.
    """

    name: str
    default: Any
    meaning: str
    minimum: float | None = None

    def out_of_range(self, value: Any) -> str | None:
        """Why ``value`` is out of this setting's range, or None when it is in it."""
        if isinstance(self.default, (str, bool)) or not isinstance(value, (int, float)):
            return None
        if self.minimum is not None:
            return None if value >= self.minimum else f"at least {self.minimum}"
        if isinstance(self.default, int):
            least = 1 if self.default >= 1 else 0
            return None if value >= least else f"at least {least}"
        if self.default > 0 and not value > 0:
            return "above 0"
        return None
