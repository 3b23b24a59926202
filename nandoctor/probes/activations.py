"""Activation scale through the layers: finite, but growing by orders of magnitude."""

from __future__ import annotations

from typing import Any

from nandoctor.findings import Finding, Fix, Severity, Where
from nandoctor.probes.base import ProbeResult
from nandoctor.tracing import ModuleCall, traced


def leaf_profile(calls: list[ModuleCall]) -> list[ModuleCall]:
    """Leaf-module calls with a float output, in execution order."""
    return [c for c in calls if c.is_leaf and c.out_rms is not None and c.output_finite]


class ActivationsProbe:
    name = "activations"
    description = "activation scale (abs-max, RMS) per module; flags growth by orders of magnitude"
    order = 40
    requires = ("forward_ok",)

    def run(self, ctx: Any) -> ProbeResult:
        settings = ctx.settings
        profile = leaf_profile(traced(ctx)[0].calls)
        rows = [{"module": c.name, "type": c.kind, "absmax": c.out_absmax, "rms": c.out_rms} for c in profile]
        raw = {"profile": rows}
        if len(profile) < 2:
            return ProbeResult([], raw)
        reference = max(profile[0].out_rms, 1e-12)
        peak = max(profile, key=lambda c: c.out_rms)
        growth = peak.out_rms / reference
        raw.update({"reference_rms": reference, "peak_rms": peak.out_rms, "growth": growth})
        if growth < settings.activation_growth or peak.out_rms < settings.activation_min_rms:
            return ProbeResult([], raw)
        first = next(c for c in profile if c.out_rms >= reference * 100)
        severity = Severity.CRITICAL if growth >= settings.activation_growth ** 2 else Severity.WARNING
        finding = Finding(
            "activation_explosion", severity,
            f"activation RMS grows {growth:.3g}x through the layers, from {reference:.3g} at "
            f"{profile[0].name!r} to {peak.out_rms:.3g} at {peak.name!r}",
            Where(module=first.name),
            {"reference_module": profile[0].name, "reference_rms": reference, "peak_module": peak.name,
             "peak_rms": peak.out_rms, "peak_absmax": peak.out_absmax, "growth": growth,
             "first_100x_module": first.name},
            Fix(advice=f"Activations pass 100x the first layer's scale at {first.name!r}: add "
                       "LayerNorm/BatchNorm there, use a fan-in scaled init (kaiming/xavier, std "
                       "1/sqrt(fan_in)), and normalize the inputs."))
        return ProbeResult([finding], raw)
