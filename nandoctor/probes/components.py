"""Loss components one by one: each one's value and the norm of its own weighted gradient.

One forward pass gives every component; one backward pass per component (retaining the graph)
gives its gradient alone, so a NaN-producing term or a term that drowns the others is named.
"""

from __future__ import annotations

from typing import Any

from nandoctor.config import fix_config, loss_weight
from nandoctor.context import RunContext
from nandoctor.findings import CodeDoc, Finding, Fix, Severity, Stage, Where, is_finite
from nandoctor.measure.grad_origin import find_gradient_origin
from nandoctor.measure.ops import locate_nonfinite_op
from nandoctor.measure.trace import traced
from nandoctor.probes.backward import OP_ADVICE
from nandoctor.probes.base import Fact, Fold, Phase, Probe, ProbeResult, Setting, loss_side


def component_gradients(ctx: RunContext, batch: Any) -> dict[str, dict[str, float]]:
    """``{component: {"value", "weight", "grad_norm"}}`` with weighted gradient norms, one sync
    (a component weighted 0: its gradient at weight 1, which the run never gets)."""
    import torch

    params = [p for p in ctx.model.parameters() if p.requires_grad]
    result = ctx.loss(batch)
    names = list(result.components)
    queued = []
    for index, name in enumerate(names):
        weight = ctx.setup.loss_weights.get(name, 1.0)
        component = result.components[name]
        if not component.requires_grad:
            queued.append(torch.zeros((), device=component.device))
            continue
        scale = weight if weight != 0 else 1.0  # a term weighted 0: what it would give at weight 1
        grads = torch.autograd.grad(scale * component, params, retain_graph=index < len(names) - 1, allow_unused=True)
        present = [g for g in grads if g is not None]
        norms = torch._foreach_norm(present) if present else []
        queued.append(
            torch.linalg.vector_norm(torch.stack(norms)) if present else torch.zeros((), device=component.device)
        )
    device = result.total.device
    values = torch.stack(
        [result.components[n].detach().float().to(device) for n in names] + [q.float().to(device) for q in queued]
    ).tolist()
    return {
        name: {"value": values[i], "weight": ctx.setup.loss_weights.get(name, 1.0), "grad_norm": values[len(names) + i]}
        for i, name in enumerate(names)
    }


class ComponentsProbe(Probe):
    name = "components"
    description = "each named loss component's value and own gradient norm: NaN terms, dominant terms"
    phase = Phase.BACKWARD
    requires = (Fact.FORWARD_RUNS,)
    codes = (
        CodeDoc(
            "loss_component_nonfinite",
            Stage.LOSS_VALUES,
            "one named loss component produces NaN/Inf (value or gradient)",
            "One bad term poisons the total loss and every gradient.",
            "A contrastive term dividing embeddings by a norm that is zero for some rows.",
            "Add eps to the named component's divisions/norms (F.normalize(x, eps=1e-6)).",
        ),
        CodeDoc(
            "loss_component_unweighted",
            Stage.LOSS_BALANCE,
            "a named loss component is weighted 0: it is computed, and trains nothing",
            "A term switched off by its weight gives no gradient; when it is the term that carries the task "
            "(the largest gradient at weight 1), nothing else moves the loss.",
            "loss_weights {'reconstruction': 0, 'kl': 1} left over from an ablation.",
            "Give the component its weight back (the fix names it), or drop it from the loss if it is a metric.",
        ),
        CodeDoc(
            "loss_component_explosion",
            Stage.LOSS_BALANCE,
            "one named loss component's gradient dwarfs the rest",
            "The other components' signal is lost; clipping scales it away.",
            "An acyclicity term trace(A³) at weight 0.1 beside a reconstruction loss.",
            "Lower that component's weight by the ratio in the finding, or rescale the term.",
        ),
    )
    folds = (
        Fold("loss_component_nonfinite", "forward_nonfinite", loss_side),
        Fold("loss_component_nonfinite", "backward_nonfinite"),
        Fold("loss_component_explosion", "exploding_gradients"),
        # the task's own term switched off: the plateau and the rate verdicts follow from it
        *(
            Fold("loss_component_unweighted", symptom, lambda c, s: c.evidence.get("carries_the_task", False))
            for symptom in ("loss_plateau", "lr_too_low", "vanishing_gradients")
        ),
    )

    settings = (
        Setting(
            "component_dominance",
            100.0,
            "loss_component_explosion: a component's gradient this many times the next one's",
        ),
        Setting(
            "component_share",
            0.9,
            "... or a component weighted below another that carries at least this share of the summed gradient norms",
        ),
    )

    def run(self, ctx: RunContext) -> ProbeResult:
        if not traced(ctx)[0].components:  # the shared traced pass already evaluated the loss
            return ProbeResult([], {"skipped": "the loss returns a single scalar, not named components"})
        table: dict[str, dict[str, float]] = {}
        bad_batch = None
        for index, batch in enumerate(ctx.batches):
            try:
                rows = component_gradients(ctx, batch)
            except Exception as exc:  # the forward crashed: the forward probe names the module
                return ProbeResult([], {"error_in_forward": f"{type(exc).__name__}: {exc}"})
            for name, row in rows.items():
                kept = table.setdefault(name, dict(row))
                kept["grad_norm"] = (
                    max(kept["grad_norm"], row["grad_norm"]) if is_finite(row["grad_norm"]) else row["grad_norm"]
                )
                if not is_finite(row["value"]):
                    kept["value"] = row["value"]
            if any(not (is_finite(r["value"]) and is_finite(r["grad_norm"])) for r in rows.values()):
                bad_batch = index
                break
        total = sum(r["grad_norm"] for r in table.values() if is_finite(r["grad_norm"]) and r["weight"] != 0) or 1.0
        for row in table.values():
            row["share"] = row["grad_norm"] / total if is_finite(row["grad_norm"]) else None
        raw = {"components": table}
        nonfinite = [n for n, r in table.items() if not (is_finite(r["value"]) and is_finite(r["grad_norm"]))]
        if nonfinite:
            finding, ops = self._nonfinite(ctx, table, nonfinite[0], bad_batch or 0)
            raw["op_pass"] = ops.to_raw() if ops is not None else "not run: the value is finite, its gradient is not"
            return ProbeResult([finding], raw)
        raw["op_pass"] = "not run: every component is finite"
        weighted = {n: r for n, r in table.items() if r["weight"] != 0}
        return ProbeResult(self._explosion(ctx, weighted) + self._unweighted(ctx, table), raw)

    @staticmethod
    def _unweighted(ctx: RunContext, table: dict) -> list[Finding]:
        """Each component weighted 0 that would give a gradient: a note; a warning when the terms still
        trained give ``component_dominance`` times less gradient (a warm-up's KL at 0 stays a note)."""
        findings = []
        trained = [r["grad_norm"] for r in table.values() if r["weight"] != 0 and is_finite(r["grad_norm"])]
        strongest = max(trained, default=0.0)
        for name, row in table.items():
            if row["weight"] != 0 or not row["grad_norm"] > 0:
                continue
            # what the run trains on is a small fraction of the signal switched off: it carried the task
            main = row["grad_norm"] >= ctx.settings.component_dominance * strongest
            config, note = fix_config(ctx.setup, loss_weight(name), 1.0)
            others = {n: r["grad_norm"] for n, r in table.items() if n != name}
            findings.append(
                Finding(
                    "loss_component_unweighted",
                    Severity.WARNING if main else Severity.INFO,
                    f"loss component {name!r} is weighted 0: it trains nothing"
                    + (
                        f", and at weight 1 its gradient is {row['grad_norm'] / max(strongest, 1e-30):,.3g}x "
                        "that of every term the run trains on"
                        if main
                        else ""
                    ),
                    Where(component=name),
                    {
                        "component": name,
                        "weight": 0.0,
                        "grad_norm_at_weight_1": row["grad_norm"],
                        "other_grad_norms": others,
                        "carries_the_task": main,
                        "rerun_fix": {"loss_weights": {name: 1.0}},
                    },
                    Fix(
                        config,
                        f"Give {name!r} a non-zero weight (1 here){note}; if it is only a metric, compute it "
                        "under torch.no_grad() outside the loss.",
                    ),
                )
            )
        return findings

    @staticmethod
    def _nonfinite(ctx: RunContext, table: dict, name: str, batch_index: int) -> tuple[Finding, Any]:
        """The component's NaN: the op and line that made its value, or the autograd op of its gradient."""
        row = table[name]
        in_value = not is_finite(row["value"])
        origin = None if in_value else find_gradient_origin(ctx, batch_index, component=name)
        ops = locate_nonfinite_op(ctx, batch_index, component=name) if in_value else None
        site = ops.site if ops is not None else None
        evidence = {
            "component": name,
            "value": row["value"],
            "grad_norm": row["grad_norm"],
            "weight": row["weight"],
            "in": "value" if in_value else "gradient",
            "batch": batch_index,
            "others": {n: r["value"] for n, r in table.items() if n != name},
        }
        op, module, source = None, None, None
        if origin:
            op, module, source = origin["op"], origin["module"], origin.get("source")
        elif site is not None:
            op, module, source = site.op, site.module, site.source
        if op:
            evidence.update({"op": op, "module": module, "source": source})
        where = (f" (gradient first non-finite at {op}" if origin else f" (made by {op}") if op else ""
        where += (f" at {source})" if source else ")") if op else ""
        from nandoctor.probes.forward import OP_ADVICE as VALUE_ADVICE

        hint = (OP_ADVICE if origin else VALUE_ADVICE).get(op or "", "")
        return Finding(
            "loss_component_nonfinite",
            Severity.CRITICAL,
            f"loss component {name!r} is {'NaN/Inf' if in_value else 'finite but its gradient is NaN/Inf'}{where}",
            Where(module=module, component=name, op=op, source=source),
            evidence,
            Fix(
                advice=f"In the code of {name!r}"
                + (f" at {source}" if source else "")
                + ": "
                + (hint + "; " if hint else "")
                + "add eps to divisions and norms (F.normalize(x, eps=1e-6) instead of x / x.norm()), "
                "clamp before log/sqrt/acos; the other components are finite."
            ),
        ), ops

    @staticmethod
    def _explosion(ctx: RunContext, table: dict) -> list[Finding]:
        dominance = ctx.settings.component_dominance
        ranked = sorted(table.items(), key=lambda kv: -kv[1]["grad_norm"])
        if len(ranked) < 2:
            return []
        (name, top), (second_name, second) = ranked[0], ranked[1]
        if second["grad_norm"] <= 0:
            return []  # a component with no gradient at all (a constant term) dwarfs nothing
        # a main loss that dwarfs a lightly weighted regularizer is how regularizers are meant to be;
        # the harm is a term weighted as secondary carrying most of the gradient, or an absurd gradient
        meant_secondary = top["weight"] < max(r["weight"] for r in table.values())
        dominant = top["grad_norm"] / second["grad_norm"] >= dominance
        if meant_secondary:
            if not (dominant or (top["share"] or 0.0) >= ctx.settings.component_share):
                return []
        elif not dominant or top["grad_norm"] < ctx.settings.grad_norm_warning:
            return []
        ratio = top["grad_norm"] / second["grad_norm"]
        suggested = float(f"{top['weight'] * second['grad_norm'] / top['grad_norm']:.1g}")
        config, note = fix_config(ctx.setup, loss_weight(name), suggested)
        return [
            Finding(
                "loss_component_explosion",
                Severity.CRITICAL if ratio >= dominance**2 else Severity.WARNING,
                f"loss component {name!r}'s gradient is {ratio:,.3g}x that of {second_name!r} "
                f"({top['share']:.0%} of the gradient): it drowns the rest",
                Where(component=name),
                {
                    "component": name,
                    "grad_norm": top["grad_norm"],
                    "weight": top["weight"],
                    "ratio": ratio,
                    "next_component": second_name,
                    "next_grad_norm": second["grad_norm"],
                    "weighted_below_another": meant_secondary,
                    "share": top["share"],
                    "rerun_fix": {"loss_weights": {name: suggested}},
                    "table": {
                        n: {
                            "value": r["value"],
                            "weight": r["weight"],
                            "grad_norm": r["grad_norm"],
                            "share": r["share"],
                        }
                        for n, r in table.items()
                    },
                },
                Fix(
                    config,
                    f"Set the weight of {name!r} to about {suggested:g} (from {top['weight']:g}) so its "
                    f"gradient is in line with {second_name!r}'s, or rescale the term itself (normalize "
                    f"a matrix power by the dimension).{note}",
                ),
            )
        ]
