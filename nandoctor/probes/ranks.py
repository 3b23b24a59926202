"""Ranks that train different models: under ``torchrun``, every rank must train the same one.

Before a step: DDP broadcasts rank 0's weights when it wraps the model, so a rank-dependent seed
is harmless there; a model trained without it (a hand-written gradient all-reduce, a wrapper
built after a rank-dependent change, a buffer DDP does not broadcast) drifts apart from the
first step. Each rank sends a fingerprint of every floating parameter and buffer (its sum and
sum of squares, one read-back); rank 0's are the reference.

Parameters DDP does not hold (added after it wrapped the model) are named from its own
parameter list, with no step. Then a model in DDP takes one step through the wrapper (its
gradient all-reduce), and the parameters' fingerprints are compared again. One that now differs
is one DDP does not keep in sync: a ``requires_grad=False`` parameter the forward changes from
the rank's own batch. Buffers are left out there: DDP broadcasts them at the next forward, so
after a step they may differ by design.

Every rank reaches the same collectives in the same order: the step runs only when the gathered
fingerprints agree and every rank's loss and backward ran, finite, reaching every parameter DDP
waits for. In one process the probe has
nothing to compare.
"""

from __future__ import annotations

from typing import Any

from nandoctor.context import RunContext
from nandoctor.distributed import active, fingerprint, gather
from nandoctor.findings import CodeDoc, Finding, Fix, Severity, Stage, Where
from nandoctor.loss import compute_loss
from nandoctor.probes.base import Fold, Phase, Probe, ProbeResult
from nandoctor.step import fresh_optimizer


def _same(mine: tuple[float, float], reference: tuple[float, float]) -> bool:
    return all(
        a == b or abs(a - b) <= 1e-9 * max(abs(a), abs(b), 1e-30) or a != a and b != b for a, b in zip(mine, reference)
    )


class RanksProbe(Probe):
    name = "ranks"
    description = (
        "under torchrun: parameters and buffers that differ across ranks before the first step, and "
        "parameters DDP does not keep in sync after one"
    )
    phase = Phase.DATA
    requires = ()
    needs_ranks = True  # runs only under torchrun: in one process it is not chosen
    codes = (
        CodeDoc(
            "rank_divergence",
            Stage.INIT,
            "under torchrun, parameters, buffers or inputs differ across ranks where they must agree, or a "
            "NaN starts on one rank and spreads through the all-reduce; where.rank names the rank",
            "Each rank trains its own model; averaged gradients fit none of them.",
            "torch.manual_seed(seed + rank) before building a model whose gradients are all-reduced by hand.",
            "Seed the same on every rank before building the model, or wrap it in DistributedDataParallel "
            "(it broadcasts rank 0's weights).",
        ),
    )
    folds = (Fold("rank_divergence", "lr_too_high"),)

    def run(self, ctx: RunContext) -> ProbeResult:
        if not active():
            return ProbeResult([], {"skipped": "one process: no other rank to compare with"})
        prints, ready = zip(*gather((fingerprint(ctx.model), _safe_to_step(ctx))))
        differing = _differing(prints)
        raw = {
            "ranks": len(prints),
            "tensors": len(prints[0]),
            "differ": {str(r): n[:10] for r, n in differing.items()},
        }
        if differing:
            return ProbeResult([_diverged_before(ctx, prints, differing)], raw)
        if ctx.setup.ddp_model is None:
            raw["after_step"] = "skipped: the model is not in DistributedDataParallel"
            return ProbeResult([], raw)
        untracked = _not_in_ddp(ctx)
        if untracked:
            raw["after_step"] = f"skipped: DDP does not know {untracked[:10]}"
            return ProbeResult([_untracked(untracked)], raw)
        blocked = sorted({why for why in ready if why})
        if blocked:  # every rank takes the same branch: the gathered answers are the same everywhere
            raw["after_step"] = f"skipped: {'; '.join(blocked)}"
            return ProbeResult([], raw)
        after = gather(_parameters_after_one_ddp_step(ctx))
        drifted = _differing(after)
        raw["after_step"] = {"differ": {str(r): n[:10] for r, n in drifted.items()}}
        return ProbeResult([_diverged_after(ctx, after, drifted)] if drifted else [], raw)


def _safe_to_step(ctx: RunContext) -> str | None:
    """Why this rank must not step through DDP (None: it may). A forward that raises would leave the other
    ranks waiting in the all-reduce; a parameter DDP waits for that gets no gradient (without
    ``find_unused_parameters``) leaves its reduction unfinished, and its hooks would fire in later passes."""
    ddp = ctx.setup.ddp_model
    if ddp is None:
        return None
    for parameter in ctx.model.parameters():
        parameter.grad = None  # the runner restores the grads after the probe
    try:
        total = compute_loss(ctx.setup, ctx.model, ctx.batches[0]).total
        total.backward()
    except Exception:  # the forward and backward probes report the user's crash
        return "the loss or its backward raises on some rank"
    if not bool(total.detach().isfinite()):  # the NaN would reach every rank: the traces say where it starts
        return "the loss is not finite on some rank"
    waited = [p for p in getattr(ddp, "_module_parameters", []) if p.requires_grad and p.grad is None]
    for parameter in ctx.model.parameters():
        parameter.grad = None
    if waited and not ctx.setup.ddp_find_unused:
        return "some parameters DDP waits for get no gradient (see no_gradient_path)"
    return None


def _not_in_ddp(ctx: RunContext) -> list[str]:
    """Trainable parameters of the module that DDP does not hold (added after it wrapped the module)
    and was not told to ignore: it never all-reduces their gradients."""
    ddp = ctx.setup.ddp_model
    held = getattr(ddp, "_module_parameters", None)
    if held is None:  # another DDP than torch's: nothing to read
        return []
    known = {id(p) for p in held}
    ignored = set(getattr(ddp, "parameters_to_ignore", ()))
    return [n for n, p in ctx.model.named_parameters() if p.requires_grad and id(p) not in known and n not in ignored]


def _untracked(names: list[str]) -> Finding:
    module = names[0].rpartition(".")[0] or None
    return Finding(
        "rank_divergence",
        Severity.CRITICAL,
        f"DistributedDataParallel does not hold {len(names)} trainable parameter(s) of the model (first: "
        f"'{names[0]}'): they were added after it wrapped the model, so their gradients are never all-reduced "
        "and every rank trains its own copy",
        Where(module=module, parameter=names[0]),
        {"names": names[:10], "count": len(names), "when": "before the first step: DDP's own parameter list"},
        Fix(
            advice="Attach every submodule (and load any replaced head) before wrapping the model in "
            "DistributedDataParallel, or wrap it again after the change."
        ),
    )


def _differing(prints: list[dict[str, tuple[float, float]]]) -> dict[int, list[str]]:
    """Per rank after 0: the names whose fingerprint differs from rank 0's."""
    reference = prints[0]
    differing: dict[int, list[str]] = {}
    for rank, mine in enumerate(prints[1:], 1):
        names = [n for n in reference if n not in mine or not _same(mine[n], reference[n])]
        if names:
            differing[rank] = names
    return differing


def _parameters_after_one_ddp_step(ctx: RunContext) -> dict[str, tuple[float, float]]:
    """Fingerprints of the parameters after one step of the user's optimizer through the DDP wrapper
    (its gradient all-reduce) on this rank's first batch; the runner restores the weights after."""
    setup = ctx.setup
    with fresh_optimizer(setup, setup.lr) as optimizer:
        optimizer.zero_grad(set_to_none=True)
        total = compute_loss(setup, setup.ddp_model, ctx.batches[0]).total
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    buffers = {n for n, _ in ctx.model.named_buffers()}
    return {n: v for n, v in fingerprint(ctx.model).items() if n not in buffers}


_SEED_ADVICE = (
    "Seed every rank the same before building the model (torch.manual_seed(seed), not seed + rank), "
    "or wrap it in DistributedDataParallel, which broadcasts rank 0's weights when it is built"
)


def _diverging(
    title: str, differing: dict[int, list[str]], prints: Any, when: str, advice: str, **evidence: Any
) -> Finding:
    """The ``rank_divergence`` finding of the first rank that differs from rank 0, with both fingerprints."""
    first_rank = min(differing)
    names = differing[first_rank]
    evidence = {
        "ranks_differing": sorted(differing),
        "differing": len(names),
        "names": names[:10],
        **evidence,
        "rank0_sum": prints[0][names[0]][0],
        f"rank{first_rank}_sum": prints[first_rank].get(names[0], (None,))[0],
        "when": when,
    }
    return Finding(
        "rank_divergence",
        Severity.CRITICAL,
        title,
        Where(parameter=names[0], rank=first_rank),
        evidence,
        Fix(advice=advice),
    )


def _diverged_before(ctx: RunContext, prints: tuple, differing: dict[int, list[str]]) -> Finding:
    first_rank = min(differing)
    names = differing[first_rank]
    buffers = {n for n, _ in ctx.model.named_buffers()}
    kind = "buffer" if names[0] in buffers else "parameter"
    title = (
        f"rank {first_rank} starts from different weights than rank 0: {len(names)} of {len(prints[0])} "
        f"parameters and buffers differ (first: {kind} '{names[0]}')"
    )
    advice = _SEED_ADVICE
    if kind == "buffer":
        advice += "; a buffer changed after wrapping is synced only with broadcast_buffers=True"
    return _diverging(title, differing, prints, "before the first step", advice + ".", of=len(prints[0]))


def _diverged_after(ctx: RunContext, after: list, drifted: dict[int, list[str]]) -> Finding:
    """Parameters the same on every rank before a step and different after one: DDP does not sync them."""
    first_rank = min(drifted)
    names = drifted[first_rank]
    parameters = dict(ctx.model.named_parameters())
    frozen = [n for n in names if n in parameters and not parameters[n].requires_grad]
    if frozen:
        why = (
            f"{frozen[0]!r} has requires_grad=False and changes in the forward (or the optimizer step) from the rank's "
            "own batch; DDP all-reduces gradients only and broadcasts buffers, not such parameters"
        )
        advice = (
            "Register state the forward updates as a buffer (self.register_buffer), which DDP broadcasts from rank 0 "
            "with broadcast_buffers=True, or all-reduce it yourself after the update"
        )
    else:
        why = "its update differs by rank although DDP averaged the gradients"
        advice = (
            "Check what changes the parameter besides the optimizer (a hook, an in-place update in the forward) "
            "and make it the same on every rank"
        )
    title = (
        f"rank {first_rank}'s weights drift from rank 0's after one DDP step: {len(names)} parameter(s) "
        f"differ (first: '{names[0]}'): {why}"
    )
    when = "after one step through DistributedDataParallel"
    return _diverging(title, drifted, after, when, advice + ".", requires_grad_false=frozen[:10])
