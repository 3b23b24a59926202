"""Renderers: report dict -> text or JSON. They format; they never compute findings."""

from __future__ import annotations

import json
import math
from typing import Any


def json_safe(value: Any) -> Any:
    """NaN/Inf are not JSON: they become the strings "nan", "inf", "-inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if value != value else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def render_json(report: dict[str, Any]) -> str:
    return json.dumps(json_safe(report), indent=2, allow_nan=False)


def _number(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.4g}" if abs(value) < 1e6 else f"{value:.3e}"
    return str(value)


def _evidence_line(evidence: dict[str, Any]) -> str:
    parts = []
    for key, value in evidence.items():
        if isinstance(value, (dict, list)):
            continue
        parts.append(f"{key}={_number(value)}")
    return ", ".join(parts)


def _where(where: dict[str, Any]) -> str:
    parts = [f"{k}={v!r}" for k, v in where.items() if v is not None]
    return ", ".join(parts) if parts else "-"


def _tables(report: dict[str, Any]) -> list[str]:
    from tabulate import tabulate

    out = []
    gradients = report["probes"].get("gradients", {})
    if gradients.get("top"):
        rows = [(r["parameter"], _number(r["grad_norm"])) for r in gradients["top"]]
        out += ["", f"Gradient norms at the first step (global {_number(gradients['global_norm'])}):",
                tabulate(rows, headers=["parameter", "grad norm"], tablefmt="simple", disable_numparse=True)]
    activations = report["probes"].get("activations", {})
    if activations.get("profile") and any(f["code"] == "activation_explosion" for f in report["findings"]):
        rows = [(r["module"], r["type"], _number(r["rms"]), _number(r["absmax"])) for r in activations["profile"][:25]]
        out += ["", "Activation scale by layer (execution order):",
                tabulate(rows, headers=["module", "type", "rms", "abs max"], tablefmt="simple",
                         disable_numparse=True)]
    return out


def render_text(report: dict[str, Any]) -> str:
    findings = report["findings"]
    counts = {s: sum(f["severity"] == s for f in findings) for s in ("critical", "warning", "info")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no findings"
    lines = [f"nandoctor {report['nandoctor_version']}  {report['spec']}",
             f"verdict: {report['verdict'].upper()} ({summary})"]
    for number, finding in enumerate(findings, 1):
        lines += ["", f"{number}. [{finding['severity']}] {finding['code']}: {finding['title']}",
                  f"   where:    {_where(finding['where'])}"]
        evidence = _evidence_line(finding["evidence"])
        if evidence:
            lines.append(f"   evidence: {evidence}")
        if finding["fix"]["config"]:
            lines.append("   config:   " + ", ".join(f"{k}: {_number(v)}" for k, v in finding["fix"]["config"].items()))
        if finding["fix"]["advice"]:
            lines.append(f"   fix:      {finding['fix']['advice']}")
        for explained in finding["evidence"].get("explains", []):
            lines.append(f"   explains: {explained['code']}: {explained['title']}")
    skipped = {name: raw["skipped"] for name, raw in report["probes"].items()
               if isinstance(raw, dict) and str(raw.get("skipped", "")).startswith("needs")}
    failed = {name: raw["error"] for name, raw in report["probes"].items() if isinstance(raw, dict) and "error" in raw}
    lines += _tables(report)
    if skipped:
        lines += ["", "skipped: " + "; ".join(f"{n} ({why})" for n, why in skipped.items())]
    if failed:
        lines += ["", "probe errors: " + "; ".join(f"{n}: {why}" for n, why in failed.items())]
    return "\n".join(lines)


def render(report: dict[str, Any], fmt: str) -> str:
    if fmt == "markdown":
        from nandoctor.render_formats import render_markdown

        return render_markdown(report)
    return render_json(report) if fmt == "json" else render_text(report)
