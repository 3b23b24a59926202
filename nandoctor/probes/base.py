"""What a probe is: a name, the facts it needs and provides, its codes, settings and fold rules.

Everything the rest of nandoctor knows about a probe is declared on its class, so adding a
probe is one file and one line in ``probes/__init__.py``: the code table, the settings (and
``configs/probes.yaml``), the fold table and ``--probe`` closure are built from the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Any, ClassVar

from nandoctor.context import RunContext
from nandoctor.findings import CodeDoc, Finding, Setting


class Fact(str, Enum):
    """What one probe establishes for the probes after it."""

    FORWARD_RUNS = "forward_runs"  # the user's forward and loss run without raising
    FORWARD_OK = "forward_ok"  # ... and every output and the loss are finite
    BACKWARD_OK = "backward_ok"  # the backward pass runs and every gradient is finite
    AUTOCAST_RUNS = "autocast_runs"  # the forward runs at the precision the user trains with


@dataclass(frozen=True)
class Fold:
    """A symptom explained by a present cause is folded under it (``evidence.explains``)."""

    cause: str
    symptom: str
    when: Callable[[Finding, Finding], bool] = field(default=lambda cause, symptom: True)


def loss_side(cause: Finding, symptom: Finding) -> bool:
    """The symptom sits outside every module: in the loss function."""
    return symptom.where.module in (None, "")


def no_rate_trained(symptom: Finding) -> bool:
    """A rate finding from a sweep where no rate trained (nothing recommended)."""
    return "recommended_lr" in symptom.evidence and symptom.evidence["recommended_lr"] is None


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


class Phase(IntEnum):
    """When a probe runs. Probes of one phase run in registry order (``probes.PROBES``); the
    registry checks that every fact a probe needs is provided by a probe that runs before it."""

    DATA = 10  # the batches, the parameters and the labels, before anything runs
    FORWARD = 20  # the forward pass and the loss
    BACKWARD = 30  # the gradients of one step
    ACTIVITY = 40  # what the traced pass recorded: activations, saturation, dead units, gradient scale
    TRAINING = 60  # steps of training: the LR sweep and the user's own configuration


class Cost(str, Enum):
    """What a probe costs: ``--quick``, ``smoke`` and ``replay`` run only the probes that do not train."""

    PASSES = "passes"  # a few forward/backward passes over the cached batches
    TRAINS = "trains"  # trains the model from its start for many steps


class Probe:
    """Base class: subclasses set the class attributes and implement :meth:`run`.

    ``order`` is the phase's number unless a probe sets its own (a probe added by a test).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    phase: ClassVar[Phase] = Phase.ACTIVITY
    order: ClassVar[int]
    cost: ClassVar[Cost] = Cost.PASSES
    requires: ClassVar[tuple[Fact, ...]] = ()
    provides: ClassVar[tuple[Fact, ...]] = ()
    codes: ClassVar[tuple[CodeDoc, ...]] = ()
    settings: ClassVar[tuple[Setting, ...]] = ()
    folds: ClassVar[tuple[Fold, ...]] = ()
    needs_ranks: ClassVar[bool] = False  # compares ranks: chosen only under torchrun

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "order" not in cls.__dict__:
            cls.order = int(cls.phase)

    def run(self, ctx: RunContext) -> ProbeResult:  # pragma: no cover - every probe overrides it
        raise NotImplementedError


def nothing_to_train(ctx: RunContext) -> ProbeResult | None:
    """A probe that trains says so and stops when no parameter requires grad: an optimizer would
    have nothing to step (the gradients probe reports the loss that depends on no parameter)."""
    if any(p.requires_grad for p in ctx.model.parameters()):
        return None
    return ProbeResult([], {"skipped": "nothing to train: no parameter requires grad"})
