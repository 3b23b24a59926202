"""BatchNorm under DDP with a per-rank batch too small for its statistics: ``SyncBatchNorm`` is the fix.

Under DDP each rank's ``BatchNorm`` normalizes with the statistics of that rank's batch alone.
Below roughly 8 to 16 samples per device those statistics are noise (Wu & He, Group
Normalization, 2018; Ioffe, Batch Renormalization, 2017): the activations each step are shifted
and scaled by a random amount, and the running statistics used at evaluation differ from what
training normalized with. The count of values per channel does not settle it (the positions of
one image move together), so the noise is measured: each rank records its BatchNorms' batch
statistics on its cached batches (measure/batchnorm.py), every rank gathers every rank's at this
one fixed point, and each rank computes the same comparison. The control is the pooled
statistics ``SyncBatchNorm`` would use: a finding needs the per-rank statistics to be worth fewer
than ``bn_min_effective`` independent samples AND pooling to shrink their noise (the pooled
statistics worth at least ``sqrt(world size)`` times more), so that the noise is the per-rank
batch's, not a difference between batches that pooling keeps.

Every rank reaches the gather even when it has no BatchNorm or its forward raised (it sends what
it has, or why it has nothing); the collective is never skipped, or the other ranks would wait.
In one process there is no other rank and nothing is said.
"""

from __future__ import annotations

import math
from typing import Any

from nandoctor.context import RunContext
from nandoctor.distributed import active, gather, world_size
from nandoctor.errors import InternalError, describe
from nandoctor.findings import CodeDoc, Finding, Fix, Setting, Severity, Stage, Where
from nandoctor.measure.batchnorm import Comparison, batchnorm_calls, compare_ranks, single_values
from nandoctor.probes.base import Fold, Phase, Probe, ProbeResult

SETTINGS = (
    Setting(
        "bn_min_effective",
        8.0,
        "batchnorm_small_batch: independent samples a rank's BatchNorm statistics must be worth (measured), "
        "below which they are noise",
    ),
)

FIX = (
    "Convert the model's BatchNorms before wrapping it in DDP: "
    "model = nn.SyncBatchNorm.convert_sync_batchnorm(model), then DistributedDataParallel(model); "
    "or use GroupNorm/LayerNorm, or a larger per-rank batch."
)


def _round(value: float | None) -> float | None:
    return None if value is None or math.isinf(value) else float(f"{value:.4g}")


def _row(c: Comparison) -> dict[str, Any]:
    return {
        "module": c.module,
        "count_per_rank": c.count_per_rank,
        "samples_per_rank": c.samples_per_rank,
        "sync_count": c.sync_count,
        "effective_per_rank": _round(c.effective_per_rank),
        "effective_sync": _round(c.effective_sync),
        "deviation": _round(c.deviation),
        "sync_deviation": _round(c.sync_deviation),
        "mean_offset": _round(c.mean_offset),
        "var_ratio": [_round(c.var_ratio_low), _round(c.var_ratio_high)],
        "calls": c.steps,
    }


def too_noisy(c: Comparison, floor: float) -> bool:
    """The per-rank statistics are worth fewer than ``floor`` samples and pooling the ranks helps."""
    if c.effective_per_rank >= floor:
        return False
    if c.effective_sync is None:  # one call: no control measured; the per-rank measure alone decides
        return True
    return c.effective_sync >= math.sqrt(c.world_size) * c.effective_per_rank


def _same_module_when_lone(cause: Finding, symptom: Finding) -> bool:
    """The BatchNorm that raised on one value per channel is the one this finding names."""
    return cause.severity == Severity.CRITICAL and symptom.where.module == cause.where.module


def shards_differ(c: Comparison) -> bool:
    """Each rank's offset from the pooled statistics stays with it from batch to batch (a share of the
    offsets well above the 1/batches that noise keeps, nearer 1): the ranks' data differ, not only
    their batches' noise."""
    if c.rank_offset_share is None or c.steps_per_rank < 2:
        return False
    return c.rank_offset_share > (1.0 + 1.0 / c.steps_per_rank) / 2


class BatchNormRanksProbe(Probe):
    name = "batchnorm_ranks"
    description = "under torchrun: BatchNorm statistics of one rank's batch measured against every rank's"
    phase = Phase.DATA
    requires = ()  # never skipped on one rank only: its gather must be reached by every rank
    needs_ranks = True
    settings = SETTINGS
    codes = (
        CodeDoc(
            "batchnorm_small_batch",
            Stage.DATA,
            "under torchrun/DDP, a BatchNorm normalizes with the statistics of one rank's batch, which are "
            "measured to be noise (worth a few samples); SyncBatchNorm would pool every rank's",
            "Each step every activation is shifted and scaled by a random amount, the running statistics used "
            "at evaluation differ from what training normalized with, and accuracy drops or training is unstable; "
            "below about 8 samples per device BatchNorm degrades sharply.",
            "A ResNet wrapped in DDP with 2 images per GPU and plain nn.BatchNorm2d.",
            FIX,
        ),
    )

    folds = (Fold("batchnorm_small_batch", "forward_error", _same_module_when_lone),)

    def run(self, ctx: RunContext) -> ProbeResult:
        if not active():
            return ProbeResult([], {"skipped": "one process: no other rank to compare with"})
        try:
            records, completed = batchnorm_calls(ctx)
            mine: dict[str, Any] = {"records": records, "completed": completed}
        except Exception as exc:  # ours: sent as a failure, so the gather below still happens on every rank
            mine = {"records": {}, "completed": 0, "error": describe(exc)}
        gathered = gather(mine)  # the one collective: every rank, every run
        failed = {number: part["error"] for number, part in enumerate(gathered) if "error" in part}
        per_rank = [part["records"] for part in gathered]
        lone, compared = single_values(per_rank), compare_ranks(per_rank)
        raw: dict[str, Any] = {
            "ranks": len(gathered),
            "batches_completed": [part["completed"] for part in gathered],
            "modules": [_row(c) for c in compared],
        }
        if failed:  # every rank says nothing rather than a finding some ranks were not measured for
            raw["failed"] = {str(n): why for n, why in failed.items()}
            if "error" in mine:
                raise InternalError(f"measuring the BatchNorm statistics: {mine['error']}")
            return ProbeResult([], raw)
        if lone:
            raw["one_value_per_channel"] = [{"module": m, "ranks": r, "sync_count": n} for m, r, n in lone]
            return ProbeResult([self._one_value(lone)], raw)
        if not compared:
            raw["skipped"] = "no training-mode BatchNorm measured on two ranks"
            return ProbeResult([], raw)
        noisy = [c for c in compared if too_noisy(c, ctx.settings.bn_min_effective)]
        if not noisy:
            return ProbeResult([], raw)
        return ProbeResult([self._finding(ctx, noisy, len(compared))], raw)

    def _one_value(self, lone: list[tuple[str, list[int], int]]) -> Finding:
        """A rank whose batch gives a BatchNorm one value per channel: training-mode BatchNorm raises."""
        module, ranks, pooled = lone[0]
        title = (
            f"BatchNorm {module!r} gets 1 value per channel on rank {ranks[0]}: in training mode BatchNorm cannot "
            f'normalize one value and raises ("Expected more than 1 value per channel")'
        )
        advice = (
            f"A per-rank batch of one sample (often the last, short batch of an epoch split over {world_size()} "
            f"ranks) leaves BatchNorm one value per channel. Drop the short batch (DataLoader(..., drop_last=True), "
            f"DistributedSampler(..., drop_last=True)) or use a larger per-rank batch; pooled over the ranks, as "
            f"SyncBatchNorm does, the call has {pooled} values per channel. " + FIX
        )
        evidence = {
            "module": module,
            "count_per_rank": 1,
            "ranks_with_one_value": ranks,
            "world_size": world_size(),
            "sync_count": pooled,
            "modules": [m for m, _, _ in lone],
        }
        where = Where(module=module, rank=ranks[0])
        return Finding("batchnorm_small_batch", Severity.CRITICAL, title, where, evidence, Fix(advice=advice))

    def _finding(self, ctx: RunContext, noisy: list[Comparison], measured: int) -> Finding:
        first = noisy[0]
        ranks = world_size()
        floor = ctx.settings.bn_min_effective
        apart = shards_differ(first)
        title = (
            f"BatchNorm {first.module!r} normalizes with the statistics of one rank's batch ({first.samples_per_rank} "
            f"samples, {first.count_per_rank} values per channel), measured to be worth {first.effective_per_rank:.1f} "
            f"independent samples"
        )
        if apart:
            title += f", and they stay apart rank by rank over {first.steps_per_rank} batches: the ranks' data differ"
        if len(noisy) > 1:
            title += f" ({len(noisy)} of {measured} BatchNorms)"
        evidence: dict[str, Any] = {
            "module": first.module,
            "count_per_rank": first.count_per_rank,
            "samples_per_rank": first.samples_per_rank,
            "world_size": ranks,
            "sync_count": first.sync_count,
            "effective_per_rank": _round(first.effective_per_rank),
            "effective_sync": _round(first.effective_sync),
            "deviation": _round(first.deviation),
            "sync_deviation": _round(first.sync_deviation),
            "mean_offset": _round(first.mean_offset),
            "var_ratio": [_round(first.var_ratio_low), _round(first.var_ratio_high)],
            "rank_offset_share": _round(first.rank_offset_share),
            "min_effective": floor,
            "modules": {c.module: _round(c.effective_per_rank) for c in noisy},
        }
        advice = (
            f"Each rank's BatchNorm statistics are {'off' if apart else 'noise'}: the batch mean of {first.module!r} "
            f"sits {first.mean_offset:.2f} std from the mean over all {ranks} ranks on average, and its variance is "
            f"{first.var_ratio_low:.2f}x to {first.var_ratio_high:.2f}x theirs. "
        )
        if first.effective_sync is None:
            advice += "(Measured on one batch per rank: the pooled statistics' noise was not measured.) "
        elif first.effective_sync >= floor:
            advice += (
                f"Pooled over the {ranks} ranks ({first.sync_count} values per channel), as SyncBatchNorm does, they "
                f"are worth {first.effective_sync:.1f} samples. "
            )
        else:
            advice += (
                f"Pooled over the {ranks} ranks, as SyncBatchNorm does, they are still worth only "
                f"{first.effective_sync:.1f} samples: SyncBatchNorm alone is not enough; prefer GroupNorm or a "
                "larger per-rank batch. "
            )
        if apart:
            advice += (
                "Each rank's offset persists from batch to batch, so its shard is not like the others' (data split "
                "by file, class or source without shuffling), and a larger per-rank batch would not help: shuffle "
                "across ranks (DistributedSampler(dataset, shuffle=True)), and pool the statistics: "
                "model = nn.SyncBatchNorm.convert_sync_batchnorm(model) before DistributedDataParallel(model)."
            )
        else:
            advice += FIX
        if getattr(ctx.setup.device, "type", None) == "cpu":
            advice += " (SyncBatchNorm needs GPU inputs: on CPUs use GroupNorm or a larger per-rank batch.)"
        return Finding(
            "batchnorm_small_batch",
            Severity.WARNING,
            title,
            Where(module=first.module),
            evidence,
            Fix(advice=advice),
        )
