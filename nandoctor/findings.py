"""Findings: the plain data every probe returns and every renderer reads."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any


class Severity(str, Enum):
    """How bad a finding is; the order is used by ``--fail-on`` and the ranking."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return {"info": 0, "warning": 1, "critical": 2}[self.value]


@dataclass(frozen=True)
class Where:
    """Where a finding points: names as ``named_modules()`` / ``named_parameters()`` give them."""

    module: str | None = None
    component: str | None = None
    feature: str | None = None
    parameter: str | None = None


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
