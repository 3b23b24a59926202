"""What each BatchNorm normalizes with on this rank, and how far that is from every rank's together.

A training-mode ``BatchNorm`` normalizes each channel with the mean and variance of the values
it sees in one call (batch x spatial positions). Under DDP each rank computes them from its own
per-rank batch; ``SyncBatchNorm`` computes them from every rank's values at once. The count of
values alone does not say how noisy that is: the positions of one image are strongly correlated,
so 2 images of 64 positions behave like about 2 samples, not 128. So this measures it.

:func:`batchnorm_calls` records, for every call of every training-mode ``BatchNorm1d/2d/3d`` on
the cached batches (a forward pre-hook, removed after), the values per channel and the
per-channel batch mean and (biased) variance; :func:`compare_ranks` takes every rank's records
(plain data, gathered by the caller) and measures, against the statistics of every value of every
rank and batch (the reference), the deviation of each rank's statistics (what each rank
normalizes with) and of the pooled ones (what ``SyncBatchNorm`` would normalize with). From a
deviation ``D`` (RMS over channels of the mean's offset in units of the reference std) follows the
effective number of independent samples, ``(1 - share) / D**2`` (the variance of a mean of
``n`` independent values, less the share of the reference it makes up). The pooled deviation is
the control: if the per-rank noise is what pooling removes, it shrinks as the count grows.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from nandoctor.errors import InternalError
from nandoctor.measure.hooks import module_names, ours

#: channels of one module sent to the other ranks: the measures average over channels, and a
#: model of 2,048-channel layers must not gather megabytes
MAX_CHANNELS = 256


def batchnorms(model: Any) -> list[tuple[str, Any]]:
    """(name, module) of every BatchNorm that computes its own statistics per rank (not SyncBatchNorm)."""
    from torch import nn

    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, nn.SyncBatchNorm)
    ]


@dataclass
class ModuleCalls:
    """One BatchNorm's calls on one rank: plain numbers, picklable for the gather."""

    eps: float
    calls: list[dict[str, Any]] = field(default_factory=list)  # step, call, count, samples, mean, var


def batchnorm_calls(ctx: Any) -> tuple[dict[str, ModuleCalls], int]:
    """Every training-mode BatchNorm call on the cached batches, and how many batches ran to the end.

    A BatchNorm in eval mode with running statistics (frozen) normalizes with those, not the
    batch's, and is not recorded. A forward that raises keeps the calls made before it. A model
    with a training-mode SyncBatchNorm is not run at all: under torchrun its forward issues a
    collective, and a forward one rank runs alone would wait for the others.
    """
    import torch
    from torch import nn

    found = batchnorms(ctx.model)
    synced = any(isinstance(m, nn.SyncBatchNorm) and m.training for m in ctx.model.modules())
    if not found or synced:  # a training SyncBatchNorm all-reduces in every forward: no forward of ours here
        return {}, 0
    names = module_names(ctx.model)
    records = {name: ModuleCalls(float(module.eps)) for name, module in found}
    pending: list[tuple[str, int, int, int, int, Any]] = []  # on the device until the one read-back
    step = 0
    calls_in_step: dict[str, int] = {}

    def record(module: Any, args: tuple) -> None:
        x = args[0] if args else None
        uses_batch = module.training or module.running_mean is None
        if not uses_batch or not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
            return
        name = names[id(module)]
        call = calls_in_step.get(name, 0)
        calls_in_step[name] = call + 1
        channels = x.shape[1]
        count = x.numel() // channels if channels else 0
        if count == 0:
            return
        if count == 1:  # training-mode BatchNorm raises on it; kept, so the rank that had it is known
            pending.append((name, step, call, 1, int(x.shape[0]), x.new_zeros(2, 0)))
            return
        dims = [0, *range(2, x.dim())]
        var, mean = torch.var_mean(x.detach()[:, :MAX_CHANNELS].float(), dim=dims, correction=0)
        pending.append((name, step, call, count, int(x.shape[0]), torch.stack([mean, var])))

    completed = 0
    with ExitStack() as hooks, torch.no_grad():
        for _, module in found:
            hooks.enter_context(module.register_forward_pre_hook(ours(record)))
        for step, batch in enumerate(ctx.batches):
            calls_in_step.clear()
            try:
                ctx.loss(batch)
                completed += 1
            except InternalError:
                raise
            except Exception:  # the user's forward raised (or its loss is not usable): other probes say so
                pass
    if pending:  # one read-back for every call (of modules on any device)
        device = pending[0][-1].device
        flat = torch.cat([stats.reshape(-1).double().to(device) for *_, stats in pending]).cpu().tolist()
        at = 0
        for name, step_of_call, call, count, samples, stats in pending:
            width = stats.shape[1]
            mean, var = flat[at : at + width], flat[at + width : at + 2 * width]
            at += 2 * width
            records[name].calls.append(
                {"step": step_of_call, "call": call, "count": count, "samples": samples, "mean": mean, "var": var}
            )
    return {name: calls for name, calls in records.items() if calls.calls}, completed


@dataclass(frozen=True)
class Comparison:
    """One BatchNorm, every rank: per-rank counts and the measured noise of the statistics."""

    module: str
    world_size: int
    count_per_rank: int  # values per channel per rank in one call (the smallest seen)
    samples_per_rank: int  # dim 0 of the input (the smallest seen)
    sync_count: int  # the values per channel SyncBatchNorm would pool in one call
    steps: int  # calls compared (one per cached batch and call of the module)
    deviation: float  # RMS over ranks, calls, channels of (rank mean - reference mean) / reference std
    sync_deviation: float | None  # the same for the pooled statistics; None from one call
    mean_offset: float  # mean over ranks, calls, channels of |rank mean - pooled mean| / pooled std
    var_ratio_low: float  # smallest and largest over ranks and calls of mean_c(rank var / pooled var)
    var_ratio_high: float
    effective_per_rank: float  # independent samples the per-rank statistics are worth
    effective_sync: float | None  # ... and the pooled ones (None from one call)
    rank_offset_share: float | None  # share of the offsets a rank keeps across batches (None from one batch)
    steps_per_rank: int  # batches each rank's offsets were measured on


def _pooled(parts: list[tuple[int, Any, Any]]) -> tuple[Any, Any, int]:
    """Mean, variance and count of the union of groups given by (count, mean, var)."""
    total = sum(n for n, _, _ in parts)
    mean = sum(n * m for n, m, _ in parts) / total
    var = sum(n * (v + (m - mean) ** 2) for n, m, v in parts) / total
    return mean, var, total


def single_values(per_rank: list[dict[str, ModuleCalls]]) -> list[tuple[str, list[int], int]]:
    """BatchNorms called with one value per channel on some rank (training-mode BatchNorm raises
    ``Expected more than 1 value per channel``): (module, those ranks, the values every rank's
    batches of that call hold together, what SyncBatchNorm would normalize over)."""
    found = []
    for name in dict.fromkeys(name for records in per_rank for name in records):
        counts: dict[tuple[int, int], dict[int, int]] = {}
        for rank, records in enumerate(per_rank):
            for c in records[name].calls if name in records else ():
                counts.setdefault((c["step"], c["call"]), {})[rank] = c["count"]
        lone = sorted({r for by_rank in counts.values() for r, n in by_rank.items() if n == 1})
        if lone:
            pooled = min(sum(by_rank.values()) for by_rank in counts.values() if 1 in by_rank.values())
            found.append((name, lone, pooled))
    return found


def compare_ranks(per_rank: list[dict[str, ModuleCalls]]) -> list[Comparison]:
    """For each BatchNorm recorded on at least two ranks, in rank 0's (model) order, the comparison."""
    import torch

    order = list(dict.fromkeys(name for records in per_rank for name in records))
    compared = []
    for name in order:
        keyed: dict[tuple[int, int], dict[int, tuple[int, Any, Any, int]]] = {}
        eps = 0.0
        for rank, records in enumerate(per_rank):
            if name not in records:
                continue
            eps = records[name].eps
            for c in records[name].calls:
                keyed.setdefault((c["call"], c["step"]), {})[rank] = (
                    c["count"],
                    torch.tensor(c["mean"], dtype=torch.float64),
                    torch.tensor(c["var"], dtype=torch.float64),
                    c["samples"],
                )
        by_call: dict[int, list[dict[int, tuple]]] = {}
        for (call, _), ranks in sorted(keyed.items()):
            widths = {len(m) for _, m, _, _ in ranks.values()}
            if len(ranks) > 1 and len(widths) == 1 and all(n > 1 for n, *_ in ranks.values()):
                by_call.setdefault(call, []).append(ranks)
        row = _compare_calls(name, eps, by_call, len(per_rank))
        if row is not None:
            compared.append(row)
    return compared


def _compare_calls(name: str, eps: float, by_call: dict[int, list[dict[int, tuple]]], world: int) -> Comparison | None:
    """The measures over every compared call of one module (calls of one index share a reference)."""
    import torch

    rank_sq, sync_sq, offsets, ratios, shares, sync_shares = [], [], [], [], [], []
    counts, samples, sync_counts = [], [], []
    apart: dict[tuple[int, int], list[Any]] = {}  # (call, rank) -> each step's offset from the pooled mean
    for index, steps in by_call.items():
        reference_mean, reference_var, total = _pooled([r[:3] for ranks in steps for r in ranks.values()])
        # a constant channel (BatchNorm outputs its bias: no noise) or a non-finite one (other probes' business)
        live = (reference_var > max(eps, 1e-12)) & reference_var.isfinite() & reference_mean.isfinite()
        if not bool(live.any()):
            continue
        scale = (reference_var[live] + eps).sqrt()
        for ranks in steps:
            pooled_mean, pooled_var, pooled_count = _pooled([r[:3] for r in ranks.values()])
            pooled_std = (pooled_var[live] + eps).sqrt()
            sync_sq.append((((pooled_mean - reference_mean)[live] / scale) ** 2).mean())
            sync_shares.append(pooled_count / total)
            sync_counts.append(pooled_count)
            for rank, (count, mean, var, batch) in ranks.items():
                apart.setdefault((index, rank), []).append((mean - pooled_mean)[live] / pooled_std)
                rank_sq.append((((mean - reference_mean)[live] / scale) ** 2).mean())
                offsets.append(((mean - pooled_mean)[live].abs() / pooled_std).mean())
                ratios.append(((var[live] + eps) / (pooled_var[live] + eps)).mean())
                shares.append(count / total)
                counts.append(count)
                samples.append(batch)
    if not rank_sq:
        return None
    deviation = float(torch.stack(rank_sq).mean().sqrt())
    calls = len(sync_sq)
    several = calls > len(by_call)  # a reference of more than one call: the pooled statistics vary too
    sync_deviation = float(torch.stack(sync_sq).mean().sqrt()) if several else None

    # the share of the offsets that stays with the rank from batch to batch: about 1/steps for noise,
    # near 1 for shards that differ (a rank whose data is not like the others')
    runs = [torch.stack(v) for v in apart.values() if len(v) > 1]
    persistent = None
    if runs:
        total = torch.cat([r.reshape(-1) for r in runs]).square().mean()
        kept = torch.cat([r.mean(0) for r in runs]).square().mean()
        persistent = float(kept / total) if float(total) > 0 else 0.0

    def effective(share: float, dev: float | None) -> float | None:
        if dev is None:
            return None
        return float("inf") if dev == 0 else (1.0 - share) / dev**2

    return Comparison(
        module=name,
        world_size=world,
        count_per_rank=min(counts),
        samples_per_rank=min(samples),
        sync_count=min(sync_counts),
        steps=calls,
        deviation=deviation,
        sync_deviation=sync_deviation,
        mean_offset=float(torch.stack(offsets).mean()),
        var_ratio_low=float(torch.stack(ratios).min()),
        var_ratio_high=float(torch.stack(ratios).max()),
        effective_per_rank=effective(sum(shares) / len(shares), deviation),
        effective_sync=effective(sum(sync_shares) / len(sync_shares), sync_deviation),
        rank_offset_share=persistent,
        steps_per_rank=min((len(v) for v in apart.values()), default=0),
    )
