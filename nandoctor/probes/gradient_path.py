"""Trainable parameters the loss cannot move: a cut graph, or a gradient zero by construction.

The traced pass records which trainable parameters got no gradient (``None``) or an exactly zero
one on every cached batch; measure/graph.py explains them with one more forward: the op and the
user's line that cut the path (``torch.no_grad`` around a module, ``.detach()``, ``.item()``, a
NumPy round trip), or the zero-valued factors that hold each other's gradient at exactly zero.
Parameters frozen on purpose (``requires_grad=False``) are never judged; small gradients are
vanishing_gradients' and dead ReLUs dead_units': an exact zero that a step of the other
parameters does not lift, on zero-valued parameters, is neither.
"""

from __future__ import annotations

from nandoctor.context import RunContext
from nandoctor.findings import CodeDoc, Finding, Fix, Severity, Stage, Where
from nandoctor.measure.graph import Cut, GradientPaths, measure_paths
from nandoctor.measure.trace import traced
from nandoctor.probes.base import Fact, Fold, Phase, Probe, ProbeResult
from nandoctor.probes.parameters import owner


def _listed(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _common_module(names: list[str]) -> str:
    """The deepest module that holds every one of ``names``."""
    parts = [owner(n).split(".") if owner(n) else [] for n in names]
    common: list[str] = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


class GradientPathProbe(Probe):
    name = "gradient_path"
    description = "trainable parameters the loss does not reach (a cut graph) or whose gradient is zero by construction"
    phase = Phase.BACKWARD
    requires = (Fact.FORWARD_OK,)
    codes = (
        CodeDoc(
            "no_gradient_path",
            Stage.INIT,
            "the loss does not depend on some or all trainable parameters (a cut graph), or their "
            "gradient is exactly zero by construction",
            "A parameter without a path to the loss never changes: the optimizer steps nothing, and "
            "the loss stays where it started at every learning rate.",
            "An encoder called under torch.no_grad() while its weights require grad; a loss rebuilt "
            "as torch.tensor(loss.item(), requires_grad=True); a gate a(x) * b(x) with both layers "
            "zero-initialised.",
            "Remove the cut the finding names (the no_grad block, .detach(), .item(), the NumPy round "
            "trip), or freeze the parameters on purpose with requires_grad_(False); initialise one "
            "factor of a zero product with non-zero weights.",
        ),
    )
    folds = (
        Fold("no_gradient_path", "vanishing_gradients"),
        Fold("no_gradient_path", "dead_units", lambda c, s: bool(c.evidence.get("stuck_parameters"))),
        Fold("no_gradient_path", "loss_plateau"),
        Fold("no_gradient_path", "lr_too_low"),
        # no weight can move: whatever the sweep saw at any rate (a constant output) follows from it
        Fold("no_gradient_path", "lr_too_high", lambda c, s: bool(c.evidence.get("no_weight_learns"))),
    )

    def run(self, ctx: RunContext) -> ProbeResult:
        # a backward that raised (an in-place op) left every gradient None: that is no cut
        traces = [
            t
            for t in traced(ctx)
            if t.crash is None and (t.backward_error is None or "does not require grad" in t.backward_error)
        ]
        if not traces:
            return ProbeResult([], {"skipped": "no traced batch ran its backward"})
        trainable = [n for n, p in ctx.model.named_parameters() if p.requires_grad]
        none = [n for n in trainable if all(n in t.no_grad_params for t in traces)]
        zero = [n for n in trainable if n not in none and all(t.grad_norms.get(n, 0.0) == 0.0 for t in traces)]
        raw: dict = {"trainable": len(trainable), "no_grad": len(none), "zero_grad": len(zero)}
        if not trainable or not (none or zero):
            return ProbeResult([], raw)
        paths = measure_paths(ctx, traces[0].batch_index, none, zero)
        raw.update(
            cut=paths.cut[:50],
            unused=paths.unused[:50],
            stuck=paths.stuck[:50],
            cuts=[vars(c) for c in paths.cuts],
            loss_leaf=paths.loss_leaf,
        )
        findings = [self._cut(paths, cut) for cut in paths.cuts]
        if paths.stuck:
            findings.append(self._stuck(paths))
        if paths.unused and (not findings or ctx.setup.ddp_find_unused is False):
            findings.append(self._unused(paths, ctx.setup.ddp_find_unused))
        return ProbeResult(findings, raw)

    @staticmethod
    def _cut(paths: GradientPaths, cut: Cut) -> Finding:
        names = cut.parameters
        nothing = len(paths.cut) + len(paths.unused) >= len(paths.trainable)  # no parameter reaches the loss
        severity = Severity.CRITICAL if nothing else Severity.WARNING
        module = cut.module if cut.module is not None else _common_module(names)
        at = f" at {cut.source}" if cut.source else ""
        place = f"module {module!r}" if module else "the model"
        if cut.how == "no_grad":
            if cut.module is not None:
                where_cut = f"the output of {place} has no grad_fn: its forward runs under torch.no_grad(){at}"
            else:
                where_cut = f"{cut.op}{at}: the op on these parameters runs under torch.no_grad()"
            advice = (
                f"{where_cut}. Move the call out of the no_grad block, or freeze {place} on purpose with "
                f"requires_grad_(False) if it is meant to stay fixed."
            )
        elif cut.how in ("detach", "detach_", "data", "item", "tolist", "numpy"):
            call = {"data": ".data", "item": ".item()", "tolist": ".tolist()", "numpy": ".numpy()"}.get(
                cut.how, ".detach()"
            )
            where_cut = f"{call}{at} takes the value out of the autograd graph"
            rewrap = (
                " and the loss is rebuilt as a new leaf (requires_grad set on a result): its gradient stops there"
                if paths.loss_leaf
                else ""
            )
            advice = (
                f"{where_cut}{rewrap}. Keep the computation in torch tensors from the parameters to the "
                f"loss (no {call}, no NumPy round trip); use {call} only for logging."
            )
        elif cut.how == "loss_leaf":
            where_cut = "the loss has no grad_fn: it was built from values, not from the model's output"
            advice = (
                f"{where_cut}. Return the loss tensor the model's output computes; setting requires_grad on a "
                f"result makes a new leaf that reaches no parameter."
            )
        else:
            where_cut = f"no op between {place} and the loss carries a gradient"
            advice = f"{where_cut}: look for .detach(), torch.no_grad or a value copied out of the graph."
        title = f"{len(names)} trainable parameter(s) in {place} get no gradient: {where_cut}"
        if paths.loss_leaf and not paths.loss_requires_grad:
            title = f"the loss depends on no trainable parameter: {where_cut}"
        return Finding(
            "no_gradient_path",
            severity,
            title,
            Where(module=module, parameter=names[0], op=cut.op, source=cut.source),
            {
                "parameters": names[:20],
                "count": len(names),
                "trainable": len(paths.trainable),
                "cut": cut.how,
                "loss_has_grad_fn": not paths.loss_leaf,
                "loss_requires_grad": paths.loss_requires_grad,
                "no_weight_learns": severity == Severity.CRITICAL,
            },
            Fix(advice=advice),
        )

    @staticmethod
    def _stuck(paths: GradientPaths) -> Finding:
        stuck = paths.stuck
        weights = [n for n in stuck if n.endswith("weight")] or stuck
        module = _common_module(stuck)
        # critical when no weight moves at all: at most biases still get a gradient
        moving = set(paths.trainable) - set(stuck) - set(paths.blocked) - set(paths.cut) - set(paths.unused)
        everything = not any(not n.endswith("bias") for n in moving)
        if len(weights) > 1:
            pair = f"{weights[0]!r} and {weights[1]!r} are both"
            names = pair if len(weights) == 2 else f"{_listed(weights)} are all"
            what = f"{names} zero-initialised: the product's gradient is zero"
            advice = f"{what}, and stays zero after any step. Initialise one of them with non-zero weights."
        else:
            what = f"{_listed(weights)} is zero-initialised and its gradient is exactly zero"
            advice = (
                f"{what}, and stays zero after any step (what follows it passes no gradient at zero). "
                f"Initialise it with non-zero weights."
            )
        return Finding(
            "no_gradient_path",
            Severity.CRITICAL if everything else Severity.WARNING,
            f"{len(stuck)} zero-valued parameter(s) get exactly zero gradient by construction: {what}",
            Where(module=module or owner(stuck[0]), parameter=stuck[0]),
            {
                "stuck_parameters": stuck[:20],
                "blocked_parameters": paths.blocked[:20],
                "control": "one small step of every parameter with a gradient; these stayed exactly zero",
                "trainable": len(paths.trainable),
                "no_weight_learns": everything,
            },
            Fix(advice=advice),
        )

    @staticmethod
    def _unused(paths: GradientPaths, ddp_find_unused: bool | None) -> Finding:
        names = paths.unused
        module = _common_module(names)
        evidence = {"parameters": names[:20], "count": len(names), "cut": "unused", "ddp_find_unused": ddp_find_unused}
        if ddp_find_unused is False:  # DDP waits for their gradients and raises at the next step
            return Finding(
                "no_gradient_path",
                Severity.WARNING,
                f"{len(names)} trainable parameter(s) are never used by the forward, and the model is in "
                f"DistributedDataParallel with find_unused_parameters=False: {_listed(names)}",
                Where(module=module, parameter=names[0]),
                evidence,
                Fix(
                    advice="DDP expects a gradient for every parameter and raises at the next step ('Expected to "
                    "have finished reduction in the prior iteration'). Remove the unused module, freeze it "
                    "(requires_grad_(False)) before wrapping, or wrap with find_unused_parameters=True (an extra "
                    "graph traversal per step)."
                ),
            )
        return Finding(
            "no_gradient_path",
            Severity.INFO,
            f"{len(names)} trainable parameter(s) are never used by the forward: {_listed(names)}",
            Where(module=module, parameter=names[0]),
            evidence,
            Fix(advice="No op reads them; freeze them (requires_grad_(False)) or remove the module if it is unused."),
        )
