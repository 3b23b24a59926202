"""Short training runs from the snapshot, as the user trains: their optimizer, clipping, precision.

A run cycles through the cached training batches and records, per step, the loss and the
gradient norm before clipping. Each run starts from the same weights and seed; the model is
restored by the caller's snapshot. A run stops early once it has diverged.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

DIVERGED, UNSTABLE, LEARNS, FLAT = "diverged", "unstable", "learns", "flat"


@dataclass
class TrainRun:
    lr: float
    clip: float | None
    steps: int
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)  # before clipping
    nonfinite_step: int | None = None
    initial_loss: float | None = None  # mean over the training batches, before any step
    final_loss: float | None = None
    heldout_initial: float | None = None  # on a batch never trained on
    heldout_final: float | None = None
    verdict: str = FLAT
    drop: float = 0.0  # (initial - final) / |initial|

    @property
    def max_grad_norm(self) -> float | None:
        finite = [g for g in self.grad_norms if math.isfinite(g)]
        return max(finite) if finite else None

    def to_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "clip": self.clip, "steps_run": len(self.losses), "verdict": self.verdict,
                "drop": self.drop, "initial_loss": self.initial_loss, "final_loss": self.final_loss,
                "min_loss": min((l for l in self.losses if math.isfinite(l)), default=None),
                "max_grad_norm": self.max_grad_norm, "nonfinite_step": self.nonfinite_step,
                "heldout_initial": self.heldout_initial, "heldout_final": self.heldout_final,
                "losses": self.losses, "grad_norms": self.grad_norms}


def _autocast(ctx: Any):
    import torch

    amp = ctx.setup.amp
    if amp is None:
        return nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type=ctx.setup.device.type, dtype=dtype)


def split_batches(batches: list[Any]) -> tuple[list[Any], list[Any]]:
    """Train on all but the last cached batch, hold the last one out (when there are two or more)."""
    return (batches[:-1], batches[-1:]) if len(batches) > 1 else (batches, [])


def mean_loss(ctx: Any, batches: list[Any]) -> float | None:
    import torch

    if not batches:
        return None
    with torch.no_grad(), _autocast(ctx):
        values = torch.stack([ctx.loss(b).total.detach().float() for b in batches])
    return float(values.mean())


def make_optimizer(ctx: Any, lr: float):
    import torch

    params = [p for p in ctx.model.parameters() if p.requires_grad]
    factory = ctx.setup.optimizer or (lambda ps, rate: torch.optim.AdamW(ps, lr=rate))
    return factory(params, lr)


def starting_losses(ctx: Any) -> tuple[float | None, float | None]:
    """Mean loss on the training batches and on the held-out one, before any step."""
    train_batches, heldout = split_batches(ctx.batches)
    ctx.model.train()
    return mean_loss(ctx, train_batches), mean_loss(ctx, heldout)


def train(ctx: Any, lr: float, steps: int, clip: float | None,
          start: tuple[float | None, float | None] | None = None) -> TrainRun:
    """``steps`` optimizer steps at ``lr`` from the current weights; the caller restores them.

    ``start`` is :func:`starting_losses` of these weights, when the caller already has it.
    """
    import torch

    run = TrainRun(lr=lr, clip=clip, steps=steps)
    train_batches, heldout = split_batches(ctx.batches)
    model = ctx.model
    run.initial_loss, run.heldout_initial = start if start is not None else starting_losses(ctx)
    model.train()
    optimizer = make_optimizer(ctx, lr)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    scaler = torch.amp.GradScaler(ctx.setup.device.type) if ctx.setup.amp == "fp16" and ctx.setup.device.type == "cuda" else None
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        with _autocast(ctx):
            loss = ctx.loss(train_batches[step % len(train_batches)]).total
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip else math.inf)
        loss_value, norm_value = torch.stack([loss.detach().float(), norm.float()]).tolist()  # one sync a step
        run.losses.append(loss_value)
        run.grad_norms.append(norm_value)
        if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
            run.nonfinite_step = step
            break
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if _blew_up(run, ctx.settings):
            break
    if run.nonfinite_step is None:
        run.final_loss, run.heldout_final = mean_loss(ctx, train_batches), mean_loss(ctx, heldout)
    classify(run, ctx.settings)
    return run


def _blew_up(run: TrainRun, limits: Any) -> bool:
    """Stop a diverging rate early: the loss is far above where it started."""
    start = run.initial_loss
    return (start is not None and math.isfinite(start)
            and run.losses[-1] > start + limits.blowup_rise * max(abs(start), 1e-3))


def classify(run: TrainRun, limits: Any) -> str:
    """diverged / unstable / learns / flat, by the cut-offs in ``limits`` (the dynamics settings)."""
    start, end = run.initial_loss, run.final_loss
    if run.nonfinite_step is not None or end is None or not math.isfinite(end) or start is None:
        run.verdict = DIVERGED
        return run.verdict
    scale = max(abs(start), 1e-8)
    run.drop = (start - end) / scale
    spiked = any(l > start + limits.spike_rise * scale for l in run.losses)
    norms = [g for g in run.grad_norms if math.isfinite(g)]
    grew = len(norms) > 2 and norms[0] > 0 and max(norms[2:]) > limits.grad_growth * norms[0]
    if end > start + limits.diverged_rise * scale or _blew_up(run, limits):
        run.verdict = DIVERGED
    elif spiked or grew:
        run.verdict = UNSTABLE
    elif run.drop >= limits.learns_drop:
        run.verdict = LEARNS
    else:
        run.verdict = FLAT
    return run.verdict
