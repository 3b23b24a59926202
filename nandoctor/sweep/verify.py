"""A config fix re-run: the short training with the user's setup and with the fix, same start.

A fix is a change of loss weights (``{"loss_weights": {name: weight}}``) or of the autocast
precision (``{"amp": "bf16"}``). Both runs are judged by the fixed setup's objective on the held-out
batch: a term switched off, or drowned by another, shows there as a fall the user's weights never
give, and a run whose fp16 forward overflows is scored as it would be trained after the fix. The
user's own total cannot judge a weight fix: the fix changes what it sums.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from nandoctor.state import run_snapshot
from nandoctor.step import score
from nandoctor.sweep.stream import BatchStream
from nandoctor.sweep.training import BAD, train


def with_fix(ctx: Any, change: dict[str, Any]) -> Any:
    """A run context whose setup has ``change`` (loss weights merged in, the precision replaced); the
    model, batches and recordings are the same, the user's setup is left as it was."""
    setup = replace(
        ctx.setup,
        loss_weights={**ctx.setup.loss_weights, **change.get("loss_weights", {})},
        amp=change.get("amp", ctx.setup.amp),
    )
    return replace(ctx, setup=setup)


def verify_fix(ctx: Any, change: dict[str, Any]) -> dict[str, Any] | None:
    """``{"steps", "before", "after", "ok"}`` for the fix ``change``; None without a held-out batch."""
    import torch

    setup, steps = ctx.setup, ctx.settings.sweep_steps
    stream = BatchStream(ctx, 0)  # the cached batches only: nothing more is read from the data
    if not stream.heldout:
        return None
    fixed = with_fix(ctx, change)
    scores: list[float | None] = []
    snapshot = run_snapshot(ctx)
    try:
        for trained in (ctx, fixed):
            torch.manual_seed(ctx.settings.seed)
            run = train(trained, stream, setup.lr, [steps], setup.grad_clip)
            value = score(fixed.setup, stream.heldout)[0] if run.verdict not in BAD else None
            scores.append(value if value is not None and math.isfinite(value) else None)
            snapshot.restore()
    finally:
        snapshot.restore()
    before, after = scores
    ok = after is not None and (before is None or after < before - ctx.settings.moves_drop * abs(before))
    return {"steps": steps, "before": before, "after": after, "ok": ok}
