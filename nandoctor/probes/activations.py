"""Activation scale through the layers: finite, but growing by orders of magnitude."""

from __future__ import annotations

from nandoctor.context import RunContext
from nandoctor.findings import CodeDoc, Finding, Fix, Severity, Stage, Where
from nandoctor.measure.trace import ModuleCall, traced
from nandoctor.probes.base import Fact, Phase, Probe, ProbeResult, Setting


def leaf_profile(calls: list[ModuleCall]) -> list[ModuleCall]:
    """Leaf-module calls with a float output, in execution order."""
    return [c for c in calls if c.is_leaf and c.out_rms is not None and c.output_finite]


class ActivationsProbe(Probe):
    name = "activations"
    description = "activation scale (abs-max, RMS) per module; flags growth by orders of magnitude"
    phase = Phase.ACTIVITY
    requires = (Fact.FORWARD_OK,)
    codes = (
        CodeDoc(
            "activation_explosion",
            Stage.ACTIVATION_SCALE,
            "activations stay finite but their scale grows large through the layers",
            "Large activations saturate nonlinearities, overflow in half precision and make gradients explode.",
            "A deep MLP initialized with N(0, 1) weights and no normalization.",
            "Add LayerNorm/BatchNorm, use a fan-in scaled init (kaiming/xavier), normalize inputs.",
        ),
    )

    settings = (
        Setting(
            "activation_growth", 1e3, "activation_explosion: output RMS grows this many times over the first layer's"
        ),
        Setting("activation_min_rms", 1e2, "... and reaches at least this RMS"),
        Setting(
            "activation_first_growth",
            100.0,
            "... the finding names the first layer past this many times the first layer's RMS",
        ),
    )

    def run(self, ctx: RunContext) -> ProbeResult:
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
        first = next(c for c in profile if c.out_rms >= reference * settings.activation_first_growth)
        severity = Severity.CRITICAL if growth >= settings.activation_growth**2 else Severity.WARNING
        finding = Finding(
            "activation_explosion",
            severity,
            f"activation RMS grows {growth:.3g}x through the layers, from {reference:.3g} at "
            f"{profile[0].name!r} to {peak.out_rms:.3g} at {peak.name!r}",
            Where(module=first.name),
            {
                "reference_module": profile[0].name,
                "reference_rms": reference,
                "peak_module": peak.name,
                "peak_rms": peak.out_rms,
                "peak_absmax": peak.out_absmax,
                "growth": growth,
                "first_100x_module": first.name,
            },
            Fix(
                advice=f"Activations pass 100x the first layer's scale at {first.name!r}: add "
                "LayerNorm/BatchNorm there, use a fan-in scaled init (kaiming/xavier, std "
                "1/sqrt(fan_in)), and normalize the inputs."
            ),
        )
        return ProbeResult([finding], raw)
