"""A config fix re-run: the short training with the user's setup and with the fix, same start.

A fix is a change of loss weights (``{"loss_weights": {name: weight}}``) or of the autocast
precision (``{"amp": "bf16"}``). Both runs are judged by the fixed setup's objective on the held-out
batch: a term switched off, or drowned by another, shows there as a fall the user's weights never
give, and a run whose fp16 forward overflows is scored as it would be trained after the fix. The
user's own total cannot judge a weight fix: the fix changes what it sums.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from nandoctor.state import run_snapshot
from nandoctor.step import score
from nandoctor.sweep.stream import BatchStream
from nandoctor.sweep.training import BAD, train


@contextmanager
def applied(setup: Any, change: dict[str, Any]) -> Iterator[None]:
    """``setup`` with ``change`` (loss weights merged in, the precision replaced) for the block."""
    weights, amp = dict(setup.loss_weights), setup.amp
    setup.loss_weights.update(change.get("loss_weights", {}))
    if "amp" in change:
        setup.amp = change["amp"]
    try:
        yield
    finally:
        setup.loss_weights.clear()
        setup.loss_weights.update(weights)
        setup.amp = amp


def verify_fix(ctx: Any, change: dict[str, Any]) -> dict[str, Any] | None:
    """``{"steps", "before", "after", "ok"}`` for the fix ``change``; None without a held-out batch."""
    import torch

    setup, steps = ctx.setup, ctx.settings.sweep_steps
    stream = BatchStream(ctx, 0)  # the cached batches only: nothing more is read from the data
    if not stream.heldout:
        return None
    scores: list[float | None] = []
    snapshot = run_snapshot(ctx)
    try:
        for trained_with in ({}, change):
            with applied(setup, trained_with):
                torch.manual_seed(ctx.settings.seed)
                run = train(ctx, stream, setup.lr, [steps], setup.grad_clip)
            with applied(setup, change):
                value = score(setup, stream.heldout)[0] if run.verdict not in BAD else None
            scores.append(value if value is not None and math.isfinite(value) else None)
            snapshot.restore()
    finally:
        snapshot.restore()
    before, after = scores
    ok = after is not None and (before is None or after < before - ctx.settings.moves_drop * abs(before))
    return {"steps": steps, "before": before, "after": after, "ok": ok}
