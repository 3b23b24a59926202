"""How the sweep's rates are judged against each other: ties, noise, and the recommendation.

A rate is compared with the others by its held-out score at a common checkpoint; differences within
``tie_tolerance`` of the best rate's fall (or within the training loss's own step-to-step noise)
tie, and the larger rate wins a tie. The long rung, when it ran, is where the recommendation is read.
"""

from __future__ import annotations

import math
from typing import Any

from nandoctor.sweep.training import BAD, LEARNS, TrainRun


def tie_margin(best: float, start: float | None, settings: Any) -> float:
    """Scores this close to the best tie: a share of the best rate's fall from the start, plus 0.1% of the start."""
    fall = max((start if start is not None else best) - best, 0.0)
    return settings.tie_tolerance * fall + 1e-3 * abs(start if start is not None else best)


def clearly_best(runs: dict[float, TrainRun], ordered: list[float], edge: int, steps: int, settings: Any) -> bool:
    """The edge rate beats its neighbour by more than the tie tolerance (rates the optimizer ignores tie)."""
    if len(ordered) < 2:
        return True
    mine, neighbour = runs[ordered[edge]], runs[ordered[1 if edge == 0 else -2]]
    theirs = neighbour.score_at(steps) if neighbour.verdict not in BAD else math.inf
    score = mine.score_at(steps)
    return score < theirs - tie_margin(score, mine.start_score, settings)


def _tail_noise(a: TrainRun, b: TrainRun) -> float:
    """Standard error of the difference of two runs' last-quarter mean training losses, from the
    step-to-step differences of each (a trend does not count as noise; dropout and small batches do)."""

    def variance_of_mean(run: TrainRun) -> float:
        finite = [loss for loss in run.losses if math.isfinite(loss)]
        tail = finite[-max(1, len(finite) // 4) :]
        if len(tail) < 3:
            return 0.0
        steps = [(later - earlier) ** 2 for earlier, later in zip(tail, tail[1:])]
        return sum(steps) / len(steps) / 2 / len(tail)

    return math.sqrt(variance_of_mean(a) + variance_of_mean(b))


def recommend(sweep: Any, settings: Any) -> tuple[TrainRun | None, str]:
    """The rate with the best held-out loss at the end; ties go to the larger rate; never a bad one.

    Ties: within ``tie_tolerance`` of the best rate's fall from the start, first on held-out
    loss, then on the training loss of the last quarter (there a difference within two standard
    errors of the step-to-step noise ties too: under dropout or small batches the training loss
    is noisy, and the noise must not outvote the held-out loss that tied).
    """
    final = sweep.checkpoints[-1]
    finished = [r for r in sweep.runs if r.verdict not in BAD and r.reached >= final]
    pool = finished or [r for r in sweep.runs if r.verdict not in BAD]
    if not pool:
        return None, "every rate tried diverged, was unstable or collapsed"
    long_runs = sweep.long_runs + ([sweep.long_user] if sweep.long_user is not None else [])
    longest = max((r.reached for r in long_runs), default=0)
    long_pool = [r for r in long_runs if r.verdict not in BAD and r.reached >= longest]
    failed = {r.lr for r in long_runs if r.verdict in BAD}
    judged_long = any(r.verdict == LEARNS for r in long_pool)
    if judged_long:  # the long rung judges the rates where it ran them
        pool = long_pool
    else:  # a rate that went bad in the long rung is not recommended
        pool = [r for r in pool if r.lr not in failed] or pool
    # a fall beyond the held-out noise outranks a deeper one that is not: never recommend a coin toss
    pool = [r for r in pool if r.verdict == LEARNS] or pool
    steps = min(r.reached for r in pool)
    best = min(pool, key=lambda r: r.score_at(steps))
    margin = tie_margin(best.score_at(steps), best.start_score, settings)
    tied = [r for r in pool if r.score_at(steps) <= best.score_at(steps) + margin]
    tails = [r for r in tied if r.train_tail is not None]
    if tails:
        lowest = min(tails, key=lambda r: r.train_tail)
        low = lowest.train_tail
        tied = [
            r
            for r in tied
            if r.train_tail is None
            or r.train_tail <= low + max(tie_margin(low, r.initial_loss, settings), 2 * _tail_noise(r, lowest))
        ]
    # a tie whose fall is not beyond the held-out noise loses to one whose is
    chosen = max([r for r in tied if r.verdict == LEARNS] or tied, key=lambda r: r.lr)
    if chosen.verdict != LEARNS:
        return None, (
            f"no rate brought the held-out loss down by {settings.learns_drop:.0%} "
            f"(best: {chosen.drop:.1%} at {chosen.lr:.3g})"
        )
    what = "held-out loss" if chosen.heldout_initial is not None else "training loss"
    why = f"the lowest {what} after {steps} steps ({chosen.score_at(steps):.4g}, down {chosen.drop:.0%})"
    if len(tied) > 1:
        why += f"; the largest of {len(tied)} rates within {settings.tie_tolerance:.0%} of its fall"
    if judged_long:
        why += f" (the long rung: the best rate after {final} steps and the next lower one)"
    return chosen, why
