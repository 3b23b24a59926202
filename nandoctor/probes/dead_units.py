"""Dead units: ReLU-family units that are zero for every sample of the cached batches."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from nandoctor.findings import Finding, Fix, Severity, Where
from nandoctor.probes.base import ProbeResult

RELU_FAMILY = ("ReLU", "ReLU6", "Threshold", "Hardshrink")
DEAD_WARNING, DEAD_CRITICAL = 0.5, 0.9
MIN_SAMPLES = 16


def _unit_dim(y: Any) -> int:
    """Channels of an image-like map (N, C, H, W) sit in dim 1; features elsewhere in the last."""
    return 1 if y.dim() == 4 else y.dim() - 1


class DeadUnitsProbe:
    name = "dead_units"
    description = "share of ReLU-family units that never activate on the cached batches, per module"
    order = 46
    requires = ("forward_runs",)

    def run(self, ctx: Any) -> ProbeResult:
        import torch

        names = {}
        for name, module in ctx.model.named_modules():
            names.setdefault(id(module), name)
        alive: dict[str, Any] = {}
        samples: dict[str, int] = {}

        def hook(module, args, output):
            if not isinstance(output, torch.Tensor) or output.dim() < 2:
                return
            dim = _unit_dim(output)
            with torch.no_grad():  # units to the last dimension; a unit fired if any sample is > 0
                fired = (output.detach() > 0).movedim(dim, -1).reshape(-1, output.shape[dim]).any(0)
            name = names.get(id(module), type(module).__name__)
            alive[name] = fired if name not in alive or alive[name].shape != fired.shape else alive[name] | fired
            samples[name] = samples.get(name, 0) + output.shape[0]

        ctx.model.train()
        with ExitStack() as hooks, torch.no_grad():
            for module in ctx.model.modules():
                if type(module).__name__ in RELU_FAMILY:
                    hooks.enter_context(module.register_forward_hook(hook))
            for batch in ctx.batches:
                ctx.loss(batch)
        if not alive:
            return ProbeResult([], {"skipped": "no ReLU-family modules"})
        order = list(alive)
        counts = torch.stack([torch.stack([(~alive[n]).sum(), torch.tensor(alive[n].numel(), device=alive[n].device)])
                              .to(alive[order[0]].device) for n in order]).tolist()
        rows = [{"module": n, "dead": int(d), "units": int(u), "share": d / max(u, 1), "samples": samples[n]}
                for n, (d, u) in zip(order, counts)]
        raw = {"modules": rows}
        dead = [r for r in rows if r["share"] >= DEAD_WARNING and r["samples"] >= MIN_SAMPLES]
        if not dead:
            return ProbeResult([], raw)
        first = dead[0]
        return ProbeResult([Finding(
            "dead_units", Severity.CRITICAL if first["share"] >= DEAD_CRITICAL else Severity.WARNING,
            f"{first['dead']} of {first['units']} units after {first['module']!r} ({first['share']:.0%}) never "
            f"activate on {first['samples']} samples",
            Where(module=first["module"]),
            {"dead": first["dead"], "units": first["units"], "share": first["share"],
             "samples": first["samples"], "all_modules": {r["module"]: r["share"] for r in dead}},
            Fix(advice="Dead ReLUs get no gradient and never recover: initialize biases at zero (or slightly "
                       "positive), check the scale of the inputs to the layer before, use LeakyReLU/GELU, "
                       "and lower the LR if units die during training."))], raw)
