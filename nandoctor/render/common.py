"""What every renderer shares: strict JSON, number formatting, the where line, the tables."""

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


def number(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.4g}" if abs(value) < 1e6 else f"{value:.3e}"
    return str(value)


def evidence_line(evidence: dict[str, Any]) -> str:
    parts = []
    for key, value in evidence.items():
        if isinstance(value, (dict, list)):
            continue
        parts.append(f"{key}={number(value)}")
    return ", ".join(parts)


def verified_text(verified: dict[str, Any] | None) -> str | None:
    """``fix.verified`` in words: a control re-ran the fix; what it measured before and after."""
    if not verified:
        return None
    before, after = (number(verified.get(k)) if verified.get(k) is not None else "none" for k in ("before", "after"))
    return (
        f"{'ok' if verified.get('ok') else 'NOT fixed'} in a {verified.get('steps')}-step re-run: {before} -> {after}"
    )


def where_text(where: dict[str, Any]) -> str:
    parts = [f"{k}={v!r}" for k, v in where.items() if v is not None]
    return ", ".join(parts) if parts else "-"


def batches_line(report: dict[str, Any]) -> str | None:
    """How much of the data the report rests on: the batches checked, of how many."""
    coverage = report.get("coverage") or {}
    checked, total = coverage.get("batches_checked"), coverage.get("batches_total")
    if checked is None:
        return None
    noun = "batch" if checked == 1 else "batches"
    if total is None:
        return f"checked the first {checked} {noun} of the data (it has no length; --batches reads more)"
    if total <= checked:
        return f"checked all {checked} {noun} of the data"
    return f"checked {checked} of {total} batches (the first ones; --batches reads more)"


def not_run(report: dict[str, Any]) -> dict[str, str]:
    """The chosen probes that did not run to their end, and why (the verdict is incomplete)."""
    return dict((report.get("coverage") or {}).get("probes_not_run") or {})


def skipped_for_facts(report: dict[str, Any]) -> dict[str, str]:
    """Probes skipped because a finding above made them moot (``needs forward_ok``)."""
    missed = not_run(report)
    return {
        name: raw["skipped"]
        for name, raw in report["probes"].items()
        if isinstance(raw, dict) and "skipped" in raw and name not in missed
    }


def tables(report: dict[str, Any]) -> list[str]:
    from tabulate import tabulate

    out = []
    gradients = report["probes"].get("gradients", {})
    if gradients.get("top"):
        rows = [(r["parameter"], number(r["grad_norm"])) for r in gradients["top"]]
        out += [
            "",
            f"Gradient norms at the first step (global {number(gradients['global_norm'])}):",
            tabulate(rows, headers=["parameter", "grad norm"], tablefmt="simple", disable_numparse=True),
        ]
    activations = report["probes"].get("activations", {})
    if activations.get("profile") and any(f["code"] == "activation_explosion" for f in report["findings"]):
        rows = [(r["module"], r["type"], number(r["rms"]), number(r["absmax"])) for r in activations["profile"][:25]]
        out += [
            "",
            "Activation scale by layer (execution order):",
            tabulate(rows, headers=["module", "type", "rms", "abs max"], tablefmt="simple", disable_numparse=True),
        ]
    return out
