"""The run context handed to every probe: the setup, the cached batches, shared recordings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nandoctor.findings import Setting
from nandoctor.loss import LossResult, compute_loss
from nandoctor.spec import Setup

if TYPE_CHECKING:  # the table of settings is gathered above the probes; the context only holds it
    from nandoctor.settings import Settings

RUN_SETTINGS = (
    Setting("seed", 0, "seeds torch before each probe, so the same spec gives the same report"),
    Setting("batches", 4, "batches read once from `data` and reused by every probe"),
)


@dataclass
class RunContext:
    """Built once per run. Probes read it; only the runner and ``shared`` recordings change it."""

    setup: Setup
    batches: list[Any]
    settings: Settings
    shared: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> Any:
        return self.setup.model

    def loss(self, batch: Any) -> LossResult:
        return compute_loss(self.setup, self.setup.model, batch)

    def recording(self, key: str, make: Any) -> Any:
        """A result several probes read (one traced pass), computed once on first use."""
        if key not in self.shared:
            self.shared[key] = make(self)
        return self.shared[key]
