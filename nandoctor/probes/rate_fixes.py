"""Fixes the dynamics probe offers, with what re-ran them: a rate from the sweep's own runs, a clip's
candidate ``max_norm`` rounded to a readable value; and the hint a rate that trains slowly gets."""

from __future__ import annotations

import math
from typing import Any

from nandoctor.config import LR, fix_config
from nandoctor.context import RunContext
from nandoctor.findings import Finding, Fix, Severity, Where
from nandoctor.sweep.training import LEARNS, TrainRun, finite_or_none


def nice_below(value: float) -> float:
    """The largest of 1, 2, 5 x 10^k not above ``value``."""
    exponent = math.floor(math.log10(value))
    for mantissa in (5, 2, 1):
        if mantissa * 10**exponent <= value:
            return float(f"{mantissa * 10**exponent:.3g}")
    return float(f"{10**exponent:.3g}")


def verified_rate(user: TrainRun, best: TrainRun, steps: int) -> dict[str, Any]:
    """``fix.verified`` from the sweep's own runs: the user's rate and the recommended one, same steps."""
    before, after = finite_or_none(user.score_at(steps)), finite_or_none(best.score_at(steps))
    ok = best.verdict == LEARNS and after is not None and (before is None or after < before)
    return {"steps": steps, "before": before, "after": after, "ok": ok}


def rate_fix(ctx: RunContext, user: TrainRun, best: TrainRun, steps: int, advice: str) -> Fix:
    """The rate as a config change, with its verification; a rate whose run did not help is not offered."""
    verified = verified_rate(user, best, steps)
    if not verified["ok"]:
        return Fix(advice=f"{advice} (Its {steps}-step run did not beat yours: not a verified fix.)", verified=verified)
    config, note = fix_config(ctx.setup, LR, best.lr)
    return Fix(config, f"{advice}{note}", verified)


def slow_at_the_long_rung(
    ctx: RunContext, sweep: Any, best: TrainRun, why: str, evidence: dict[str, Any], gap: float, worse: float
) -> list[Finding]:
    """A hint (info) when the user's rate, slower than the best in the short runs, still learns and is
    still as far behind at the long rung, four times as long: it trains, only in more steps than needed.
    Not a warning: the long rung is still far from a whole run, where a lower rate may catch up.
    ``gap`` and ``worse``: the dynamics probe's ``lr_worse_gap`` and ``lr_worse_loss``."""
    user = next((r for r in sweep.long_runs + [sweep.long_user] if r is not None and r.lr == sweep.user.lr), None)
    if user is None or user.verdict != LEARNS or best.reached < user.reached:
        return []
    steps = user.reached
    mine, theirs, start = user.score_at(steps), best.score_at(steps), user.start_score
    if mine is None or theirs is None or start is None:
        return []
    missed = (mine - theirs) / max(start - theirs, 1e-12)
    if missed < gap or mine - theirs < worse * (abs(theirs) + 0.01 * abs(start)):
        return []
    numbers = (
        f"after {steps} steps (the long rung) its held-out loss is {mine:.4g} against {theirs:.4g} at lr "
        f"{best.lr:.3g} (from {start:.4g}: it misses {missed:.0%} of that fall)"
    )
    return [
        Finding(
            "lr_too_low",
            Severity.INFO,
            f"lr {user.lr:.3g} trains, but slowly: {numbers}",
            Where(),
            {**evidence, "compared_at_steps": steps, "share_of_fall_missed": missed},
            rate_fix(
                ctx, user, best, steps, f"Raise the learning rate to {best.lr:.3g}: it trains in fewer steps ({why})."
            ),
        )
    ]
