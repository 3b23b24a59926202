"""The terminal report and the one-line summary (``smoke``)."""

from __future__ import annotations

from typing import Any

from nandoctor.render.common import evidence_line, number as format_number, tables, where_text


def render_text(report: dict[str, Any]) -> str:
    findings = report["findings"]
    counts = {s: sum(f["severity"] == s for f in findings) for s in ("critical", "warning", "info")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no findings"
    lines = [f"nandoctor {report['nandoctor_version']}  {report['spec']}",
             f"verdict: {report['verdict'].upper()} ({summary})"]
    for number, finding in enumerate(findings, 1):
        lines += ["", f"{number}. [{finding['severity']}] {finding['code']}: {finding['title']}",
                  f"   where:    {where_text(finding['where'])}"]
        evidence = evidence_line(finding["evidence"])
        if evidence:
            lines.append(f"   evidence: {evidence}")
        if finding["fix"]["config"]:
            lines.append("   config:   " + ", ".join(f"{k}: {format_number(v)}" for k, v in finding["fix"]["config"].items()))
        if finding["fix"]["advice"]:
            lines.append(f"   fix:      {finding['fix']['advice']}")
        for explained in finding["evidence"].get("explains", []):
            lines.append(f"   explains: {explained['code']}: {explained['title']}")
    skipped = {name: raw["skipped"] for name, raw in report["probes"].items()
               if isinstance(raw, dict) and str(raw.get("skipped", "")).startswith("needs")}
    failed = {name: raw["error"] for name, raw in report["probes"].items() if isinstance(raw, dict) and "error" in raw}
    lines += tables(report)
    if skipped:
        lines += ["", "skipped: " + "; ".join(f"{n} ({why})" for n, why in skipped.items())]
    if failed:
        lines += ["", "probe errors: " + "; ".join(f"{n}: {why}" for n, why in failed.items())]
    coverage = report.get("coverage") or {}
    checked, total = coverage.get("batches_checked"), coverage.get("batches_total")
    if checked is not None and (total is None or total > checked):
        lines += ["", f"info: checked {checked} of {total if total is not None else 'an unknown number of'} batches; "
                      f"nandoctor scan {report['spec']} runs every batch of data through the model"]
    return "\n".join(lines)


def summary_line(report: dict[str, Any], seconds: float | None = None) -> str:
    findings = report["findings"]
    counts = ", ".join(f"{sum(f['severity'] == s for f in findings)} {s}" for s in ("critical", "warning", "info"))
    top = f"; top: {findings[0]['code']} ({where_text(findings[0]['where'])})" if findings else ""
    took = f" in {seconds:.1f}s" if seconds is not None else ""
    return f"nandoctor: {report['verdict']}: {counts}{top}{took}"
