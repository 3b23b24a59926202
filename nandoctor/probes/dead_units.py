"""Dead units: ReLU-family units that are zero for every sample of the cached batches.

The shared traced pass records which units fired (measure/activity.py); this probe only
combines the batches and reads the counts back once.
"""

from __future__ import annotations

from typing import Any

from nandoctor.context import RunContext
from nandoctor.findings import CodeDoc, Finding, Fix, Severity, Stage, Where
from nandoctor.measure.activity import RELU_FAMILY
from nandoctor.measure.trace import traced
from nandoctor.probes.base import Fact, Fold, Phase, Probe, ProbeResult, Setting, no_rate_trained

__all__ = ["DeadUnitsProbe", "RELU_FAMILY"]


class DeadUnitsProbe(Probe):
    name = "dead_units"
    description = "share of ReLU-family units that never activate on the cached batches, per module"
    phase = Phase.ACTIVITY
    requires = (Fact.FORWARD_RUNS,)
    codes = (
        CodeDoc(
            "dead_units",
            Stage.DEAD_UNITS,
            "a large share of ReLU-like units never activate",
            "A unit that is zero for every input gets no gradient and never recovers.",
            "Linear layers whose biases start at -5 before a ReLU.",
            "Re-initialize biases at zero, use LeakyReLU/GELU, lower the learning rate.",
        ),
    )
    folds = (
        # a layer fed only by dead ReLUs outputs its bias, a constant that looks pinned
        Fold("dead_units", "saturation", lambda c, s: s.evidence.get("output_min") == s.evidence.get("output_max")),
        # a network dead from the start gives one output at every rate: no rate trains, and the rate is not why
        Fold("dead_units", "lr_too_high", lambda c, s: c.severity == Severity.CRITICAL and no_rate_trained(s)),
    )

    settings = (
        Setting("dead_warning", 0.5, "dead_units: share of a module's units that never fire, for a warning"),
        Setting("dead_critical", 0.9, "... and for a critical finding"),
        Setting("dead_min_samples", 16, "... judged only over at least this many samples"),
    )

    def run(self, ctx: RunContext) -> ProbeResult:
        import torch

        alive: dict[str, Any] = {}
        samples: dict[str, int] = {}
        for trace in traced(ctx):
            if trace.activity is None:
                continue
            for name, fired in trace.activity.fired.items():
                known = alive.get(name)
                alive[name] = fired if known is None or known.shape != fired.shape else known | fired
                samples[name] = samples.get(name, 0) + trace.activity.samples[name]
        if not alive:
            return ProbeResult([], {"skipped": "no ReLU-family modules"})
        order = list(alive)
        counts = torch.stack(
            [
                torch.stack([(~alive[n]).sum(), torch.tensor(alive[n].numel(), device=alive[n].device)]).to(
                    alive[order[0]].device
                )
                for n in order
            ]
        ).tolist()
        rows = [
            {"module": n, "dead": int(d), "units": int(u), "share": d / max(u, 1), "samples": samples[n]}
            for n, (d, u) in zip(order, counts)
        ]
        raw = {"modules": rows}
        dead = [
            r for r in rows if r["share"] >= ctx.settings.dead_warning and r["samples"] >= ctx.settings.dead_min_samples
        ]
        if not dead:
            return ProbeResult([], raw)
        first = dead[0]
        advice = (
            "Dead ReLUs get no gradient and never recover: initialize biases at zero (or slightly "
            "positive), check the scale of the inputs to the layer before, use LeakyReLU/GELU, "
            "and lower the LR if units die during training."
        )
        if _zero_input(ctx, first["module"]):  # the layer before is zeroed: every input sits at the kink
            advice = (
                f"Every input of {first['module']!r} is exactly 0: the layer before it is zero-initialised "
                "(weight and bias), and ReLU passes no gradient at 0, so that layer never moves. Initialise it "
                "with non-zero weights (Kaiming)."
            )
        return ProbeResult(
            [
                Finding(
                    "dead_units",
                    Severity.CRITICAL if first["share"] >= ctx.settings.dead_critical else Severity.WARNING,
                    f"{first['dead']} of {first['units']} units after {first['module']!r} ({first['share']:.0%}) never "
                    f"activate on {first['samples']} samples",
                    Where(module=first["module"]),
                    {
                        "dead": first["dead"],
                        "units": first["units"],
                        "share": first["share"],
                        "samples": first["samples"],
                        "all_modules": {r["module"]: r["share"] for r in dead},
                    },
                    Fix(advice=advice),
                )
            ],
            raw,
        )


def _zero_input(ctx: RunContext, module: str) -> bool:
    """Whether ``module`` received exactly zero inputs on every traced batch."""
    calls = [c for trace in traced(ctx) for c in trace.calls if c.name == module]
    return bool(calls) and all(c.in_min == 0.0 and c.in_max == 0.0 for c in calls)
