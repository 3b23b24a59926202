"""What a probe is: a name, what it needs, and ``run(ctx) -> ProbeResult``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from nandoctor.findings import Finding


@dataclass
class ProbeResult:
    """Findings plus the probe's raw measurements (plain data) and facts for later probes."""

    findings: list[Finding] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)


class Probe(Protocol):
    name: ClassVar[str]
    description: ClassVar[str]
    order: ClassVar[int]
    requires: ClassVar[tuple[str, ...]]

    def run(self, ctx: Any) -> ProbeResult: ...
