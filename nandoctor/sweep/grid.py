"""The learning-rate sweep: the same start, the same batches, one short run per rate."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from nandoctor.state import ModelSnapshot, preserved_rng
from nandoctor.sweep.training import DIVERGED, LEARNS, UNSTABLE, TrainRun, starting_losses, train


def snap(rate: float) -> float:
    """The nearest of 1 and 3 x 10^k in log space: grids read as 1e-4, 3e-4, 1e-3."""
    exponent = math.floor(math.log10(rate))
    options = [m * 10.0 ** e for e in (exponent - 1, exponent, exponent + 1) for m in (1, 3)]
    return float(f"{min(options, key=lambda o: abs(math.log10(o / rate))):.3g}")


def default_grid(user_lr: float, decades_down: int = 2, decades_up: int = 2) -> list[float]:
    """Half-decade rates from two decades below the user's to two above; the user's own is on it."""
    points = {snap(user_lr * 10 ** (k / 2)) for k in range(-2 * decades_down, 2 * decades_up + 1)}
    points.discard(snap(user_lr))
    return sorted(points | {user_lr})


def nearest_first(rates: list[float], center: float) -> list[float]:
    """The centre rate first, then the others by distance in log space (the most telling first)."""
    return sorted(rates, key=lambda r: (abs(math.log10(r / center)), r))


def decade_grid(user_lr: float, decades_down: int, decades_up: int) -> list[float]:
    """``user_lr * 10**k`` for k from -down to +up: the short sweep inside ``diagnose``."""
    return sorted({float(f"{user_lr * 10 ** k:.3g}") for k in range(-decades_down, decades_up + 1)} | {user_lr})


def run_sweep(ctx: Any, rates: list[float], steps: int, clip: float | None,
              progress: Callable[[str], None] = lambda message: None,
              budget_s: float | None = None, center: float | None = None) -> list[TrainRun]:
    """One run per rate from one snapshot; the model is restored after each and at the end.

    With ``budget_s``, rates run nearest ``center`` first, and a rate that would end past the
    budget (judged by the time per rate so far) is not started. Runs come back sorted by rate.
    """
    import time

    import torch

    snapshot = ModelSnapshot(ctx.model)
    runs = []
    order = nearest_first(rates, center) if center is not None else sorted(rates)
    began = time.monotonic()
    with preserved_rng():
        try:
            torch.manual_seed(ctx.settings.seed)
            start = starting_losses(ctx)  # the same weights for every rate: evaluate them once
            snapshot.restore()
            for rate in order:
                spent = time.monotonic() - began
                if budget_s is not None and runs and spent + spent / len(runs) > budget_s:
                    progress(f"nandoctor: sweep budget of {budget_s:g}s spent: {len(order) - len(runs)} rate(s) not run")
                    break
                torch.manual_seed(ctx.settings.seed)
                progress(f"nandoctor: lr {rate:.3g}: {steps} steps")
                try:
                    runs.append(train(ctx, rate, steps, clip, start))
                finally:
                    snapshot.restore()
        finally:
            snapshot.restore()
    return sorted(runs, key=lambda r: r.lr)


def recommend(runs: list[TrainRun]) -> tuple[TrainRun | None, str]:
    """The largest rate that learns stably, one grid step lower when the next one up is unstable."""
    ordered = sorted(runs, key=lambda r: r.lr)
    learners = [i for i, r in enumerate(ordered) if r.verdict == LEARNS]
    if not learners:
        return None, "no rate on the grid both learned (loss down by 5% or more) and stayed stable"
    top = learners[-1]
    above = ordered[top + 1] if top + 1 < len(ordered) else None
    if above is not None and above.verdict in (DIVERGED, UNSTABLE) and top - 1 in learners:
        chosen = ordered[top - 1]
        why = (f"{ordered[top].lr:.3g} is the largest rate that learns, but {above.lr:.3g} is {above.verdict}: "
               f"one step lower for a safety margin")
    else:
        chosen = ordered[top]
        why = f"the largest rate that learns (loss down {chosen.drop:.0%}) and stays stable"
    return chosen, why


def nearest(runs: list[TrainRun], lr: float) -> TrainRun:
    return min(runs, key=lambda r: abs(r.lr - lr) / lr)
