"""Findings: the plain data every probe returns and every renderer reads, and the code docs."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import Enum
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
    ``sample`` the batch index in ``data`` and the sample inside it (findings about data).
    """

    module: str | None = None
    component: str | None = None
    feature: str | None = None
    parameter: str | None = None
    op: str | None = None
    source: str | None = None
    batch: int | None = None
    sample: int | None = None


@dataclass(frozen=True)
class Fix:
    """A suggested change: ``config`` maps dotted config keys to values; ``advice`` says why."""

    config: dict[str, Any] = field(default_factory=dict)
    advice: str = ""


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
        return data


@dataclass(frozen=True)
class CodeDoc:
    """A finding code's documentation (``nandoctor explain CODE``) and its stage in the causal chain.

    ``stage`` orders findings cause-first: what is wrong before training starts (devices, init,
    inputs) explains the forward pass, which explains the backward pass, then the dynamics.
    """

    code: str
    stage: int
    meaning: str
    why: str
    example: str
    fix: str
