"""The one place that orders findings: most likely root cause first.

Warnings and critical findings come before info ones; among them, the stage of the causal
chain (codes.py) decides, so a cause always ranks above the symptoms it produces
(raw inputs -> exploding activations -> NaN forward -> NaN gradients -> divergence).
"""

from __future__ import annotations

from nandoctor.codes import stage_of
from nandoctor.findings import Finding, Severity


def rank(findings: list[Finding]) -> list[Finding]:
    def key(item: tuple[int, Finding]) -> tuple:
        position, finding = item
        return (finding.severity == Severity.INFO, stage_of(finding.code), -finding.severity.rank, position)

    ordered = [finding for _, finding in sorted(enumerate(findings), key=key)]
    return _drop_repeats(ordered)


def _drop_repeats(findings: list[Finding]) -> list[Finding]:
    """Two probes that see the same root (ids beyond one embedding) report it once."""
    seen, kept = set(), []
    for finding in findings:
        key = (finding.code, finding.where.module, finding.where.parameter, finding.where.component)
        if finding.where.module is not None and key in seen:
            continue
        seen.add(key)
        kept.append(finding)
    return kept


def verdict(findings: list[Finding]) -> str:
    unhealthy = any(f.severity in (Severity.CRITICAL, Severity.WARNING) for f in findings)
    return "unhealthy" if unhealthy else "healthy"
