"""``nandoctor lr-sweep``: the sweep as a command over one run context, its table and its plot."""

from __future__ import annotations

import math
import sys
from typing import Any

from nandoctor import __version__
from nandoctor.errors import UsageError, describe
from nandoctor.settings import Settings
from nandoctor.spec import Setup
from nandoctor.sweep.grid import recommend, run_sweep, sweep_rates, sweep_summary


def parse_rates(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        rates = sorted({float(part) for part in text.split(",") if part.strip()})
    except ValueError as exc:
        raise UsageError(f"--lrs takes comma-separated numbers, got {text!r}") from exc
    from nandoctor.spec import RATE_RANGE

    if not rates or any(not (r > 0 and math.isfinite(r)) for r in rates):
        raise UsageError(f"--lrs takes finite positive numbers, got {text!r}")
    if any(not RATE_RANGE[0] <= r <= RATE_RANGE[1] for r in rates):
        raise UsageError(f"--lrs takes rates between {RATE_RANGE[0]:g} and {RATE_RANGE[1]:g}, got {text!r}")
    return rates


def sweep_report(
    spec: str, setup: Setup, settings: Settings, rates: list[float] | None, steps: int | None
) -> dict[str, Any]:
    from nandoctor.runner import open_context
    from nandoctor.state import preserved_torch_globals
    from nandoctor.sweep.plan import plan_sweep

    grid = rates or sweep_rates(setup, settings)
    # run_sweep snapshots and restores the model and the RNG itself; guard torch's global flags here
    with open_context(setup, settings) as ctx, preserved_torch_globals():
        try:
            # the same plan as diagnose's (steps given with --steps are kept as asked)
            plan = plan_sweep(ctx, len(grid), steps)
            sweep = run_sweep(
                ctx,
                grid,
                plan,
                setup.grad_clip,
                center=setup.lr,
                extend=not rates,
                progress=lambda m: print(m, file=sys.stderr, flush=True),
            )
        except UsageError:
            raise
        except Exception as exc:
            raise UsageError(
                f"a training step raised {describe(exc)} (run `nandoctor diagnose {spec}` to find where)"
            ) from exc
    best, why = recommend(sweep, settings)
    user = sweep.user
    return {
        "nandoctor_version": __version__,
        "spec": spec,
        "user_lr": setup.lr,
        "optimizer": getattr(setup.optimizer, "__name__", "custom") if setup.optimizer else "AdamW",
        "grad_clip": setup.grad_clip,
        "amp": setup.amp,
        "steps": plan.steps,
        "user_diverged": user.verdict == "diverged",
        **sweep_summary(sweep, best, why),
    }
