"""A loss-weight fix re-run: the short training with the user's weights and with the fix, same start.

Both runs are judged by the fixed objective (the components weighted as the fix weights them) on
the held-out batch: a term switched off, or drowned by another, shows there as a fall the user's
weights never give. The total of the user's weights cannot judge it: the fix changes what it sums.
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
def loss_weights(setup: Any, weights: dict[str, float]) -> Iterator[None]:
    """``setup.loss_weights`` set to ``weights`` for the block, then put back as it was."""
    saved = dict(setup.loss_weights)
    setup.loss_weights.clear()
    setup.loss_weights.update(weights)
    try:
        yield
    finally:
        setup.loss_weights.clear()
        setup.loss_weights.update(saved)


def verify_weights(ctx: Any, change: dict[str, float]) -> dict[str, Any] | None:
    """``{"steps", "before", "after", "ok"}`` for the weights in ``change``; None without a held-out batch."""
    import torch

    setup, steps = ctx.setup, ctx.settings.sweep_steps
    stream = BatchStream(ctx, 0)  # the cached batches only: nothing more is read from the data
    if not stream.heldout:
        return None
    fixed = {**setup.loss_weights, **change}
    scores: list[float | None] = []
    snapshot = run_snapshot(ctx)
    try:
        for weights in (dict(setup.loss_weights), fixed):
            with loss_weights(setup, weights):
                torch.manual_seed(ctx.settings.seed)
                run = train(ctx, stream, setup.lr, [steps], setup.grad_clip)
            with loss_weights(setup, fixed):
                value = score(setup, stream.heldout)[0] if run.verdict not in BAD else None
            scores.append(value if value is not None and math.isfinite(value) else None)
            snapshot.restore()
    finally:
        snapshot.restore()
    before, after = scores
    ok = after is not None and (before is None or after < before - ctx.settings.moves_drop * abs(before))
    return {"steps": steps, "before": before, "after": after, "ok": ok}
