"""Fixes the dynamics probe offers, with what re-ran them: a rate from the sweep's own runs, a clip's
candidate ``max_norm`` rounded to a readable value."""

from __future__ import annotations

import math
from typing import Any

from nandoctor.config import LR, fix_config
from nandoctor.context import RunContext
from nandoctor.findings import Fix
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
