"""What a probe is: a name, the facts it needs and provides, its codes, settings and fold rules.

Everything the rest of nandoctor knows about a probe is declared on its class, so adding a
probe is one file and one line in ``probes/__init__.py``: the code table, the settings (and
``configs/probes.yaml``), the fold table and ``--probe`` closure are built from the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

from nandoctor.findings import CodeDoc, Finding


class Fact(str, Enum):
    """What one probe establishes for the probes after it."""

    FORWARD_RUNS = "forward_runs"  # the user's forward and loss run without raising
    FORWARD_OK = "forward_ok"  # ... and every output and the loss are finite
    BACKWARD_OK = "backward_ok"  # the backward pass runs and every gradient is finite
    AUTOCAST_RUNS = "autocast_runs"  # the forward runs at the precision the user trains with


@dataclass(frozen=True)
class Setting:
    """One tunable threshold: its name in ``--settings FILE``, its default and what it means."""

    name: str
    default: Any
    meaning: str


@dataclass(frozen=True)
class Fold:
    """A symptom explained by a present cause is folded under it (``evidence.explains``)."""

    cause: str
    symptom: str
    when: Callable[[Finding, Finding], bool] = field(default=lambda cause, symptom: True)


def loss_side(cause: Finding, symptom: Finding) -> bool:
    """The symptom sits outside every module: in the loss function."""
    return symptom.where.module in (None, "")


def inside_module(cause: Finding, symptom: Finding) -> bool:
    """The cause sits in a module (not the loss function)."""
    return cause.where.module not in (None, "")


def owns_tensor(cause: Finding, symptom: Finding) -> bool:
    """The cause's tensor (``evidence.tensor``) belongs to the symptom's module."""
    tensor = str(cause.evidence.get("tensor", ""))
    return symptom.where.module == "" or tensor.startswith(f"{symptom.where.module}.")


@dataclass
class ProbeResult:
    """Findings plus the probe's raw measurements (plain data) and facts for later probes."""

    findings: list[Finding] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    facts: dict[Fact, Any] = field(default_factory=dict)
    incomplete: str | None = None  # why the probe stopped short of its whole job (time budget)


class Probe:
    """Base class: subclasses set the class attributes and implement :meth:`run`."""

    name: ClassVar[str]
    description: ClassVar[str]
    order: ClassVar[int]
    requires: ClassVar[tuple[Fact, ...]] = ()
    provides: ClassVar[tuple[Fact, ...]] = ()
    codes: ClassVar[tuple[CodeDoc, ...]] = ()
    settings: ClassVar[tuple[Setting, ...]] = ()
    folds: ClassVar[tuple[Fold, ...]] = ()

    def run(self, ctx: Any) -> ProbeResult:  # pragma: no cover - every probe overrides it
        raise NotImplementedError
