"""Gradient norms per parameter at the user's settings: exploding or vanishing.

Vanishing is judged two ways: most parameters get no gradient at all (detached, unused), or
the gradient fades along depth: layers in forward order, each one's gradient RMS compared with
the largest RMS of the layers after it (closer to the loss). A layer whose RMS is many orders
below that is starved; the finding names the starved layer closest to the output.
"""

from __future__ import annotations

from typing import Any

from nandoctor.context import RunContext
from nandoctor.findings import CodeDoc, Finding, Fix, Severity, Stage, Where
from nandoctor.measure.trace import traced
from nandoctor.probes.base import Fact, Fold, Phase, Probe, ProbeResult, Setting
from nandoctor.probes.parameters import owner


class GradientsProbe(Probe):
    name = "gradients"
    description = "per-parameter gradient norms; flags exploding and vanishing gradients"
    phase = Phase.ACTIVITY
    requires = (Fact.FORWARD_OK, Fact.BACKWARD_OK)
    codes = (
        CodeDoc(
            "exploding_gradients",
            Stage.GRADIENT_SCALE,
            "gradient norms are very large at the user's settings",
            "Huge updates throw the weights far away; Adam's state fills with extremes.",
            "qkv_proj.weight with grad_norm=432,542,528 at LR 1e-3.",
            "Normalize inputs and targets, add normalization layers, lower the LR; clip as a guard.",
        ),
        CodeDoc(
            "vanishing_gradients",
            Stage.GRADIENT_FLOW,
            "gradients are zero or vanishingly small for all or most parameters",
            "Parameters without gradient never change: the model cannot learn.",
            "A 20-layer sigmoid MLP: gradients shrink by 4x per layer.",
            "Use ReLU-family activations, residual connections, normalization, a proper init.",
        ),
    )

    folds = (
        # no gradient reaches the early layers: no learning rate moves the loss
        Fold("vanishing_gradients", "loss_plateau"),
        Fold("vanishing_gradients", "lr_too_low"),
    )

    settings = (
        Setting("grad_norm_critical", 1e5, "exploding_gradients: global gradient norm for a critical finding"),
        Setting("grad_rms_vanishing", 1e-10, "vanishing_gradients: gradient RMS below this counts as no gradient"),
        Setting("vanishing_share", 0.9, "... for at least this share of the parameters (by element count)"),
        Setting(
            "vanishing_depth_ratio",
            1e-6,
            "... or a layer's gradient RMS below this fraction of the largest RMS of the layers after it",
        ),
        Setting("vanishing_depth_critical", 1e-10, "... critical when the first layer's RMS is below this fraction"),
        Setting("top_gradients", 10, "rows in the gradient-norm table"),
    )

    def run(self, ctx: RunContext) -> ProbeResult:
        traces = traced(ctx)
        norms: dict[str, float] = {}
        for trace in traces:
            for name, value in trace.grad_norms.items():
                norms[name] = max(norms.get(name, 0.0), value)
        numel = {n: p.numel() for n, p in ctx.model.named_parameters() if p.requires_grad}
        global_norm = sum(v * v for v in norms.values()) ** 0.5
        top = sorted(norms.items(), key=lambda kv: -kv[1])[: ctx.settings.top_gradients]
        raw = {
            "global_norm": global_norm,
            "top": [{"parameter": n, "grad_norm": v} for n, v in top],
            "no_grad_parameters": traces[0].no_grad_params,
        }
        findings = []
        if traces[-1].backward_error:  # the loss depends on no trainable parameter
            findings.append(
                Finding(
                    "vanishing_gradients",
                    Severity.CRITICAL,
                    "the loss has no gradient at all: " + traces[-1].backward_error,
                    Where(),
                    {"error": traces[-1].backward_error},
                    Fix(
                        advice="Something detaches the output from the parameters "
                        "(.detach(), .item(), torch.no_grad, requires_grad=False)."
                    ),
                )
            )
        elif norms:
            findings += self._exploding(ctx, norms, global_norm, top)
            findings += self._vanishing(ctx, norms, numel, global_norm) or self._fading(
                ctx, layer_rms(traces[0], norms, numel)
            )
        return ProbeResult(findings, raw)

    @staticmethod
    def _exploding(ctx: RunContext, norms: dict[str, float], global_norm: float, top: list) -> list[Finding]:
        settings = ctx.settings
        if global_norm < settings.grad_norm_warning:
            return []
        name, value = top[0]
        severity = Severity.CRITICAL if global_norm >= settings.grad_norm_critical else Severity.WARNING
        clip = ctx.setup.grad_clip
        if clip is not None:  # the user's clip holds the applied norm at max_norm; the audit judges the clip
            severity = Severity.INFO
        table = {n: v for n, v in top}
        return [
            Finding(
                "exploding_gradients",
                severity,
                f"global gradient norm {global_norm:,.4g} at the first step; largest: {name} {value:,.4g}",
                Where(module=owner(name), parameter=name),
                {
                    "global_norm": global_norm,
                    "largest_parameter": name,
                    "largest_norm": value,
                    "top": table,
                    "threshold": settings.grad_norm_warning,
                    "grad_clip": clip,
                },
                Fix(
                    advice="Gradients this large come from unnormalized inputs or targets, missing "
                    "normalization layers or a bad init (see findings above); clip only as a guard."
                ),
            )
        ]

    @staticmethod
    def _fading(ctx: RunContext, layers: list[tuple[str, float]]) -> list[Finding]:
        """The starved layer closest to the output, against the layers after it."""
        if len(layers) < 3:
            return []
        ratios, best_after = [], 0.0
        for name, rms in reversed(layers):
            ratios.append((name, rms, rms / best_after if best_after > 0 else None))
            best_after = max(best_after, rms)
        ratios.reverse()
        # exactly zero is a zero-initialized layer after it (by design, gone after one step), not fading
        starved = [
            row for row in ratios if row[1] > 0 and row[2] is not None and row[2] < ctx.settings.vanishing_depth_ratio
        ]
        if not starved:
            return []
        name, rms, ratio = starved[-1]
        first_name, first_rms, first_ratio = ratios[0]
        output_name, output_rms, _ = max(ratios, key=lambda row: row[1])
        critical = first_ratio is not None and first_ratio < ctx.settings.vanishing_depth_critical
        return [
            Finding(
                "vanishing_gradients",
                Severity.CRITICAL if critical else Severity.WARNING,
                f"gradients fade along depth: layer {name!r} gets RMS {rms:.3g}, {ratio:.2g}x the layers after it; "
                f"the first layer {first_name!r} gets {first_rms:.3g} against {output_rms:.3g} at {output_name!r}",
                Where(module=name),
                {
                    "layer": name,
                    "grad_rms": rms,
                    "ratio_to_later_layers": ratio,
                    "first_layer": first_name,
                    "first_layer_rms": first_rms,
                    "first_layer_ratio": first_ratio,
                    "largest_layer": output_name,
                    "largest_rms": output_rms,
                    "starved_layers": [row[0] for row in starved][:20],
                    "layers": {n: r for n, r, _ in ratios[:50]},
                    "threshold_ratio": ctx.settings.vanishing_depth_ratio,
                },
                Fix(
                    advice="Gradients shrink at every layer on the way back: use ReLU-family activations instead "
                    "of sigmoid/tanh in deep stacks, a proper init (Kaiming/Xavier, not a tiny std), "
                    "residual connections or normalization layers."
                ),
            )
        ]

    @staticmethod
    def _vanishing(
        ctx: RunContext, norms: dict[str, float], numel: dict[str, int], global_norm: float
    ) -> list[Finding]:
        settings = ctx.settings
        total = sum(numel.values()) or 1
        # a parameter that gets no gradient at all (detached, unused) learns as little as a zero one
        dead = [n for n in numel if norms.get(n, 0.0) / max(numel[n], 1) ** 0.5 < settings.grad_rms_vanishing]
        share = sum(numel[n] for n in dead) / total
        if share < settings.vanishing_share:
            return []
        severity = Severity.CRITICAL if len(dead) == len(numel) else Severity.WARNING
        deepest = dead[0]
        return [
            Finding(
                "vanishing_gradients",
                severity,
                f"{share:.0%} of parameter elements get (almost) no gradient; global norm {global_norm:.3g}",
                Where(module=owner(deepest), parameter=deepest),
                {
                    "share": share,
                    "global_norm": global_norm,
                    "parameters_without_gradient": dead[:20],
                    "parameters_with_none_grad": sum(n not in norms for n in dead),
                    "threshold_rms": settings.grad_rms_vanishing,
                },
                Fix(
                    advice="Look for a .detach() or torch.no_grad() on the path, saturated activations "
                    "(sigmoid/tanh, clamps), a zero-initialized "
                    "gate or output layer that blocks the path, or very deep stacks without "
                    "residual connections or normalization."
                ),
            )
        ]


def layer_rms(trace: Any, norms: dict[str, float], numel: dict[str, int]) -> list[tuple[str, float]]:
    """(module, gradient RMS of its own parameters) for modules with parameters, in forward order."""
    order = list(dict.fromkeys(call.name for call in trace.calls if call.is_leaf))
    rows = []
    for module in order:
        own = [n for n in norms if owner(n) == module]
        count = sum(numel.get(n, 0) for n in own)
        if own and count:
            rows.append((module, (sum(norms[n] ** 2 for n in own) / count) ** 0.5))
    return rows
