"""The one place that orders findings: most likely root cause first.

Warnings and critical findings come before info ones; among them, the stage of the causal
chain (codes.py) decides, so a cause always ranks above the symptoms it produces
(raw inputs -> exploding activations -> NaN forward -> NaN gradients -> divergence).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from nandoctor.codes import stage_of
from nandoctor.findings import Finding, Severity


def _loss_side(finding: Finding) -> bool:
    return finding.where.module in (None, "")


def _owns(cause: Finding, symptom: Finding) -> bool:
    tensor = str(cause.evidence.get("tensor", ""))
    return symptom.where.module == "" or tensor.startswith(f"{symptom.where.module}.")


def _always(cause: Finding, symptom: Finding) -> bool:
    return True


# (cause, symptom, when): a symptom explained by a present cause is folded under it.
FOLDS: list[tuple[str, str, Callable[[Finding, Finding], bool]]] = [
    ("loss_component_nonfinite", "forward_nonfinite", lambda c, s: _loss_side(s)),
    ("forward_nonfinite", "loss_component_nonfinite", lambda c, s: not _loss_side(c)),
    ("loss_component_nonfinite", "backward_nonfinite", _always),
    ("nonfinite_init", "forward_nonfinite", _owns),
    ("nonfinite_init", "loss_component_nonfinite", _always),
    ("nonfinite_init", "backward_nonfinite", _always),
    ("device_mismatch", "forward_error", _always),
    ("loss_component_explosion", "exploding_gradients", _always),
    ("saturation", "vanishing_gradients", _always),
    ("saturation", "lr_too_low", _always),  # no gradient through the clamp: no rate moves the loss
    ("saturation", "loss_plateau", _always),
    ("grad_clip_too_aggressive", "loss_plateau", _always),  # every step shrunk: the loss cannot move
    ("grad_clip_too_aggressive", "lr_too_low", _always),
    # a layer fed only by dead ReLUs outputs its bias, a constant that looks pinned
    ("dead_units", "saturation", lambda c, s: s.evidence.get("output_min") == s.evidence.get("output_max")),
    ("amp_overflow", "forward_nonfinite", _always),
]


def fold(findings: list[Finding]) -> list[Finding]:
    """Put each symptom under the cause that explains it (``evidence.explains``), not beside it."""
    kept = list(findings)
    for cause_code, symptom_code, when in FOLDS:
        causes = [f for f in kept if f.code == cause_code]
        for symptom in [f for f in kept if f.code == symptom_code]:
            cause = next((c for c in causes if when(c, symptom)), None)
            if cause is None or symptom not in kept:
                continue
            explains = list(cause.evidence.get("explains", [])) + [
                {"code": symptom.code, "title": symptom.title, "where": vars(symptom.where)}]
            updated = replace(cause, evidence=dict(cause.evidence, explains=explains))
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


def verdict(findings: list[Finding]) -> str:
    unhealthy = any(f.severity in (Severity.CRITICAL, Severity.WARNING) for f in findings)
    return "unhealthy" if unhealthy else "healthy"
