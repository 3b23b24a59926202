"""The terminal report and the one-line summary (``smoke``)."""

from __future__ import annotations

from typing import Any

from nandoctor.render.common import (
    batches_line,
    evidence_line,
    not_run,
    number,
    skipped_for_facts,
    tables,
    verified_text,
    where_text,
)


def render_text(report: dict[str, Any]) -> str:
    findings = report["findings"]
    counts = {s: sum(f["severity"] == s for f in findings) for s in ("critical", "warning", "info")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no findings"
    lines = [
        f"nandoctor {report['nandoctor_version']}  {report['spec']}",
        f"verdict: {report['verdict'].upper()} ({summary})",
    ]
    for rank, finding in enumerate(findings, 1):
        lines += [
            "",
            f"{rank}. [{finding['severity']}] {finding['code']}: {finding['title']}",
            f"   where:    {where_text(finding['where'])}",
        ]
        evidence = evidence_line(finding["evidence"])
        if evidence:
            lines.append(f"   evidence: {evidence}")
        if finding["fix"]["config"]:
            lines.append("   config:   " + ", ".join(f"{k}: {number(v)}" for k, v in finding["fix"]["config"].items()))
        if finding["fix"]["advice"]:
            lines.append(f"   fix:      {finding['fix']['advice']}")
        verified = verified_text(finding["fix"].get("verified"))
        if verified:
            lines.append(f"   verified: {verified}")
        for explained in finding["evidence"].get("explains", []):
            lines.append(f"   explains: {explained['code']}: {explained['title']}")
    lines += tables(report)
    skipped, missed, checked = skipped_for_facts(report), not_run(report), batches_line(report)
    if skipped:
        lines += ["", "skipped: " + "; ".join(f"{n} ({why})" for n, why in skipped.items())]
    if missed:
        lines += ["", "NOT RUN (the report is incomplete):"] + [f"  {n}: {why}" for n, why in missed.items()]
    if checked:
        lines += ["", checked]
    coverage = report.get("coverage") or {}
    if checked and (coverage.get("batches_total") is None or coverage["batches_total"] > coverage["batches_checked"]):
        lines.append(f"info: nandoctor scan {report['spec']} runs every batch of data through the model")
    return "\n".join(lines)


def summary_line(report: dict[str, Any], seconds: float | None = None) -> str:
    findings = report["findings"]
    counts = ", ".join(f"{sum(f['severity'] == s for f in findings)} {s}" for s in ("critical", "warning", "info"))
    top = f"; top: {findings[0]['code']} ({where_text(findings[0]['where'])})" if findings else ""
    took = f" in {seconds:.1f}s" if seconds is not None else ""
    missed = not_run(report)
    missing = f"; not run: {', '.join(missed)}" if missed else ""
    return f"nandoctor: {report['verdict']}: {counts}{top}{missing}{took}"
