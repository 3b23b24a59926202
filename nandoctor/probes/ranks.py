"""Ranks that start from different weights: under ``torchrun``, every rank must train the same model.

DDP broadcasts rank 0's weights when it wraps the model, so a rank-dependent seed is harmless
there; a model trained without it (a hand-written gradient all-reduce, a wrapper built after a
rank-dependent change, a buffer DDP does not broadcast) drifts apart from the first step. Each
rank sends a fingerprint of every floating parameter and buffer (its sum and sum of squares,
one read-back); rank 0's are the reference. In one process the probe has nothing to compare.
"""

from __future__ import annotations

from nandoctor.context import RunContext
from nandoctor.distributed import active, fingerprint, gather
from nandoctor.findings import CodeDoc, Finding, Fix, Severity, Stage, Where
from nandoctor.probes.base import Fold, Phase, Probe, ProbeResult


def _same(mine: tuple[float, float], reference: tuple[float, float]) -> bool:
    return all(abs(a - b) <= 1e-9 * max(abs(a), abs(b), 1e-30) for a, b in zip(mine, reference))


class RanksProbe(Probe):
    name = "ranks"
    description = "under torchrun: parameters and buffers that differ across ranks before the first step"
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
        prints = gather(fingerprint(ctx.model))
        reference = prints[0]
        differing: dict[int, list[str]] = {}
        for rank, mine in enumerate(prints[1:], 1):
            names = [n for n in reference if n not in mine or not _same(mine[n], reference[n])]
            if names:
                differing[rank] = names
        raw = {
            "ranks": len(prints),
            "tensors": len(reference),
            "differ": {str(r): n[:10] for r, n in differing.items()},
        }
        if not differing:
            return ProbeResult([], raw)
        first_rank = min(differing)
        names = differing[first_rank]
        buffers = {n for n, _ in ctx.model.named_buffers()}
        kind = "buffer" if names[0] in buffers else "parameter"
        title = (
            f"rank {first_rank} starts from different weights than rank 0: {len(names)} of {len(reference)} "
            f"parameters and buffers differ (first: {kind} '{names[0]}')"
        )
        evidence = {
            "ranks_differing": sorted(differing),
            "differing": len(names),
            "of": len(reference),
            "names": names[:10],
            "rank0_sum": reference[names[0]][0],
            f"rank{first_rank}_sum": prints[first_rank].get(names[0], (None,))[0],
        }
        advice = (
            "Seed every rank the same before building the model (torch.manual_seed(seed), not seed + rank), "
            "or wrap it in DistributedDataParallel, which broadcasts rank 0's weights when it is built"
        )
        if kind == "buffer":
            advice += "; a buffer changed after wrapping is synced only with broadcast_buffers=True"
        return ProbeResult(
            [
                Finding(
                    "rank_divergence",
                    Severity.CRITICAL,
                    title,
                    Where(parameter=names[0], rank=first_rank),
                    evidence,
                    Fix(advice=advice + "."),
                )
            ],
            raw,
        )
