"""Saturation: module outputs pinned at a bound (a hard clamp) or in the flat tails of tanh/sigmoid.

A pinned element passes no gradient back, so a critic clamped at ±1000 from the first batch
learns nothing. Hooks count, per module call, how many output elements sit exactly at the
output's own extreme values (zero excluded: that is ReLU's business, see dead_units).
"""

from __future__ import annotations

from typing import Any

from nandoctor.findings import CodeDoc, Finding, Fix, Severity, Where
from nandoctor.probes.base import Fact, Setting, Fold, Probe, ProbeResult
from nandoctor.measure.hooks import hooked_forward
from nandoctor.measure.trace import float_tensors, traced

TAILS = {"Tanh": (-0.99, 0.99), "Sigmoid": (0.01, 0.99), "Hardtanh": None, "Softsign": (-0.99, 0.99)}


def _pinned_shares(ctx: Any) -> list[dict[str, Any]]:
    """Per module call: the share of output elements at a bound, measured on the device, one sync."""
    import torch

    rows: list[tuple[str, str, Any]] = []

    def hook(name: str, module: Any, output: Any) -> None:
        outputs = float_tensors(output)
        if not outputs or outputs[0].numel() < 8:
            return
        y = outputs[0].detach()
        kind = type(module).__name__
        tails = TAILS.get(kind)
        if tails is not None:
            share = ((y <= tails[0]) | (y >= tails[1])).float().mean()
            bound = torch.where(y.mean() >= 0, y.amax(), y.amin())
        else:
            high, low = y.amax(), y.amin()
            at_high = ((y == high) & (high != 0)).float().mean()
            at_low = ((y == low) & (low != 0) & (low != high)).float().mean()
            share = at_high + at_low
            bound = torch.where(at_high >= at_low, high, low)
        rows.append((name, kind, torch.stack([share, bound.float(), y.amin().float(), y.amax().float()])))

    hooked_forward(ctx, hook)
    if not rows:
        return []
    values = torch.stack([r[2].to(rows[0][2].device) for r in rows]).tolist()
    merged: dict[str, dict[str, Any]] = {}
    for (name, kind, _), (share, bound, low, high) in zip(rows, values):
        row = merged.setdefault(name, {"module": name, "type": kind, "shares": [], "bound": bound,
                                       "min": low, "max": high})
        row["shares"].append(share)
    return [dict(r, share=min(r.pop("shares"))) for r in merged.values()]


def _grad_norm_under(ctx: Any, module: str) -> float | None:
    """Gradient norm of the parameters inside ``module`` (all of them for the root), first step."""
    norms = traced(ctx)[0].grad_norms
    inside = [v for n, v in norms.items() if module == "" or n.startswith(module + ".")]
    return sum(v * v for v in inside) ** 0.5 if inside else None


class SaturationProbe(Probe):
    name = "saturation"
    description = "outputs pinned at a clamp bound or in the flat tails of tanh/sigmoid, so gradients die"
    order = 45
    requires = (Fact.FORWARD_RUNS,)
    codes = (
        CodeDoc("saturation", 8,
                "outputs pinned at a clamp bound or saturated nonlinearity, so gradients die",
                "A clamped or saturated output has zero gradient: the layers behind it stop learning.",
                "A critic score clamped at ±1000 from the first batch.",
                "Replace hard clamps with a smooth bound (c * tanh(x / c)); fix the scale feeding it."),
    )
    folds = (
        Fold("saturation", "vanishing_gradients"),
        Fold("saturation", "lr_too_low"),  # no gradient through the clamp: no rate moves the loss
        Fold("saturation", "loss_plateau"),
    )

    settings = (
        Setting("saturation_warning", 0.5, "saturation: share of a module's outputs at a bound for a warning"),
        Setting("saturation_critical", 0.9, "... and for a critical finding"),
    )

    def run(self, ctx: Any) -> ProbeResult:
        rows = _pinned_shares(ctx)
        raw = {"modules": rows}
        pinned = [r for r in rows if r["share"] >= ctx.settings.saturation_warning]
        if not pinned:
            return ProbeResult([], raw)
        first = pinned[0]  # hooks fire as calls finish: the innermost module first
        behind = _grad_norm_under(ctx, first["module"])
        tails = TAILS.get(first["type"]) is not None
        severity = Severity.CRITICAL if first["share"] >= ctx.settings.saturation_critical else Severity.WARNING
        what = (f"in the flat tails of {first['type']}" if tails
                else f"exactly at a bound ({first['bound']:,.6g})")
        return ProbeResult([Finding(
            "saturation", severity,
            f"{first['share']:.0%} of the outputs of module {first['module']!r} sit {what}: no gradient passes",
            Where(module=first["module"]),
            {"share": first["share"], "bound": first["bound"], "output_min": first["min"],
             "output_max": first["max"], "module_type": first["type"], "grad_norm_behind": behind,
             "kind": "tanh/sigmoid tails" if tails else "clamp bound"},
            Fix(advice=("Replace the hard clamp with a smooth bound, c * torch.tanh(x / c), and bring "
                        "the pre-clamp scale down (LayerNorm before the last layer, a smaller init): "
                        "pinned outputs have zero gradient." if not tails else
                        f"The inputs to {first['type']} are too large: add normalization before it, use a "
                        "smaller init, or a non-saturating activation.")))], raw)
