"""Saturation: module outputs pinned at a bound (a hard clamp) or in the flat tails of tanh/sigmoid.

A pinned element passes no gradient back, so a critic clamped at ±1000 from the first batch
learns nothing. Equal values alone prove nothing (a sigmoid of zero logits is 0.5 everywhere
and passes its largest gradient; a padding mask carries none): an output counts as saturated
only where gradient is blocked behind it. The shared traced pass records, per module call,
the share of outputs at the output's own extreme values (measure/activity.py); tanh, sigmoid
and softsign are judged by their local derivative, any other module by a control: the
gradient its pinned elements pass back to its inputs and parameters against what its other
elements pass (one extra backward, only for modules that look pinned).
"""

from __future__ import annotations

from typing import Any

from nandoctor.context import RunContext
from nandoctor.findings import CodeDoc, Finding, Fix, Severity, Stage, Where
from nandoctor.measure.trace import float_tensors, traced
from nandoctor.probes.base import Fact, Fold, Phase, Probe, ProbeResult, Setting

MAX_CHECKED = 8  # modules that look pinned and get the gradient control


def _pinned_rows(ctx: RunContext) -> list[dict[str, Any]]:
    """Per module: the smallest share at a bound over its calls in the traced batches."""
    merged: dict[str, dict[str, Any]] = {}
    for trace in traced(ctx):
        for row in trace.activity.pinned if trace.activity else []:
            kept = merged.setdefault(
                row.module,
                {
                    "module": row.module,
                    "type": row.kind,
                    "share": row.share,
                    "bound": row.bound,
                    "min": row.low,
                    "max": row.high,
                    "tails": row.tails,
                },
            )
            kept["share"] = min(kept["share"], row.share)
    return list(merged.values())


def gradient_passed(ctx: RunContext, modules: list[str]) -> dict[str, float | None]:
    """Per module: gradient its pinned elements pass back, per element, relative to its free ones.

    0 for a hard clamp; about 1 when equal values still pass gradient (a sigmoid at 0.5); None
    when nothing behind the module takes a gradient (a mask built from ids). One forward of the
    first batch, one backward per module.
    """
    from contextlib import ExitStack

    import torch

    from nandoctor.measure.hooks import module_names, ours

    captured: dict[str, list[tuple[Any, list[Any]]]] = {m: [] for m in modules}
    names = module_names(ctx.model)

    def hook(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        outputs = float_tensors(output)
        if outputs and outputs[0].requires_grad:
            inputs = [t for t in float_tensors((args, kwargs)) if t.requires_grad]
            captured[names[id(module)]].append(
                (outputs[0], inputs + [p for p in module.parameters() if p.requires_grad])
            )

    ctx.model.train()
    with ExitStack() as handles, torch.enable_grad():
        for name, module in ctx.model.named_modules():
            if name in captured:
                handles.enter_context(module.register_forward_hook(ours(hook), with_kwargs=True))
        ctx.loss(ctx.batches[0])
    return {name: _passed(calls, torch) for name, calls in captured.items()}


def _passed(calls: list[tuple[Any, list[Any]]], torch: Any) -> float | None:
    pinned_sq, free_sq, pinned_n, free_n = 0.0, 0.0, 0, 0
    for y, sources in calls:
        if not sources:
            continue
        with torch.no_grad():
            low, high = torch.aminmax(y.detach())
            mask = ((y == high) & (high != 0)) | ((y == low) & (low != 0))
        for weights, is_pinned in ((mask, True), (~mask, False)):
            if not bool(weights.any()):
                continue
            grads = torch.autograd.grad(
                y, sources, grad_outputs=weights.to(y.dtype), retain_graph=True, allow_unused=True
            )
            square = sum(float(g.float().square().sum()) for g in grads if g is not None)
            count = int(weights.sum())
            if is_pinned:
                pinned_sq, pinned_n = pinned_sq + square, pinned_n + count
            else:
                free_sq, free_n = free_sq + square, free_n + count
    if not pinned_n:
        return None
    pinned = (pinned_sq / pinned_n) ** 0.5
    free = (free_sq / free_n) ** 0.5 if free_n else 0.0
    if pinned == 0.0:
        return 0.0
    return pinned / free if free > 0 else float("inf")


def _grad_norm_under(ctx: RunContext, module: str) -> float | None:
    """Gradient norm of the parameters inside ``module`` (all of them for the root), first step."""
    norms = traced(ctx)[0].grad_norms
    inside = [v for n, v in norms.items() if module == "" or n.startswith(module + ".")]
    return sum(v * v for v in inside) ** 0.5 if inside else None


class SaturationProbe(Probe):
    name = "saturation"
    description = "outputs pinned at a clamp bound or in the flat tails of tanh/sigmoid, so gradients die"
    phase = Phase.ACTIVITY
    requires = (Fact.FORWARD_RUNS,)
    codes = (
        CodeDoc(
            "saturation",
            Stage.SATURATION,
            "outputs pinned at a clamp bound or saturated nonlinearity, so gradients die",
            "A clamped or saturated output has zero gradient: the layers behind it stop learning.",
            "A critic score clamped at ±1000 from the first batch.",
            "Replace hard clamps with a smooth bound (c * tanh(x / c)); fix the scale feeding it.",
        ),
    )
    folds = (
        Fold("saturation", "vanishing_gradients"),
        Fold("saturation", "lr_too_low"),  # no gradient through the clamp: no rate moves the loss
        Fold("saturation", "loss_plateau"),
    )

    settings = (
        Setting("saturation_warning", 0.5, "saturation: share of a module's outputs at a bound for a warning"),
        Setting("saturation_critical", 0.9, "... and for a critical finding"),
        Setting(
            "saturation_passed",
            0.01,
            "... other modules: pinned outputs count as blocking when they pass back, per element, less "
            "than this fraction of the gradient their module's other outputs pass",
        ),
    )

    def run(self, ctx: RunContext) -> ProbeResult:
        rows = _pinned_rows(ctx)
        raw: dict[str, Any] = {"modules": rows}
        looks_pinned = [r for r in rows if r["share"] >= ctx.settings.saturation_warning]
        controls = [r["module"] for r in looks_pinned if not r["tails"]][:MAX_CHECKED]
        passed = gradient_passed(ctx, controls) if controls else {}
        for row in looks_pinned:
            row["gradient_passed"] = passed.get(row["module"])
        blocked = [
            r
            for r in looks_pinned
            if r["tails"]
            or (r["gradient_passed"] is not None and r["gradient_passed"] < ctx.settings.saturation_passed)
        ]
        if not blocked:
            return ProbeResult([], raw)
        first = blocked[0]  # hooks fire as calls finish: the innermost module first
        behind = _grad_norm_under(ctx, first["module"])
        tails = first["tails"]
        severity = Severity.CRITICAL if first["share"] >= ctx.settings.saturation_critical else Severity.WARNING
        what = f"in the flat tails of {first['type']}" if tails else f"exactly at a bound ({first['bound']:,.6g})"
        return ProbeResult(
            [
                Finding(
                    "saturation",
                    severity,
                    f"{first['share']:.0%} of the outputs of module {first['module']!r} sit {what}: no gradient passes",
                    Where(module=first["module"]),
                    {
                        "share": first["share"],
                        "bound": first["bound"],
                        "output_min": first["min"],
                        "output_max": first["max"],
                        "module_type": first["type"],
                        "grad_norm_behind": behind,
                        "gradient_passed": first.get("gradient_passed"),
                        "kind": "tanh/sigmoid tails" if tails else "clamp bound",
                    },
                    Fix(
                        advice=(
                            "Replace the hard clamp with a smooth bound, c * torch.tanh(x / c), and bring "
                            "the pre-clamp scale down (LayerNorm before the last layer, a smaller init): "
                            "pinned outputs have zero gradient."
                            if not tails
                            else f"The inputs to {first['type']} are too large: add normalization before it, use a "
                            "smaller init, or a non-saturating activation."
                        )
                    ),
                )
            ],
            raw,
        )
