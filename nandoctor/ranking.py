"""The one place that orders findings: most likely root cause first.

Warnings and critical findings come before info ones; among them, the stage of the causal
chain (each code's ``stage``) decides, so a cause always ranks above the symptoms it produces
(raw inputs -> exploding activations -> NaN forward -> NaN gradients -> divergence). A symptom
that a present cause explains is folded under it by the probes' fold rules.
"""

from __future__ import annotations

from dataclasses import replace

from nandoctor.codes import stage_of
from nandoctor.findings import Finding, Severity
from nandoctor.probes import fold_rules


def fold(findings: list[Finding]) -> list[Finding]:
    """Put each symptom under the cause that explains it (``evidence.explains``), not beside it.

    The cause takes the highest severity of what it explains: folding never lowers the verdict.
    """
    kept = list(findings)
    for rule in fold_rules():
        causes = [f for f in kept if f.code == rule.cause]
        for symptom in [f for f in kept if f.code == rule.symptom]:
            cause = next((c for c in causes if rule.when(c, symptom)), None)
            if cause is None or symptom not in kept:
                continue
            explains = list(cause.evidence.get("explains", [])) + [
                {"code": symptom.code, "title": symptom.title, "where": vars(symptom.where)}
            ]
            severity = max(cause.severity, symptom.severity, key=lambda s: s.rank)
            updated = replace(cause, severity=severity, evidence=dict(cause.evidence, explains=explains))
            kept[kept.index(cause)] = updated
            causes[causes.index(cause)] = updated
            kept.remove(symptom)
    return kept


def rank(findings: list[Finding]) -> list[Finding]:
    def key(item: tuple[int, Finding]) -> tuple:
        position, finding = item
        return (finding.severity == Severity.INFO, stage_of(finding.code), -finding.severity.rank, position)

    ordered = [finding for _, finding in sorted(enumerate(fold(findings)), key=key)]
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


def verdict(findings: list[Finding], complete: bool = True) -> str:
    """unhealthy (a warning or worse), else incomplete (a probe did not run to its end), else healthy."""
    if any(f.severity in (Severity.CRITICAL, Severity.WARNING) for f in findings):
        return "unhealthy"
    return "healthy" if complete else "incomplete"
