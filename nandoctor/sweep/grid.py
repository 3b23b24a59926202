"""The learning-rate sweep shared by ``diagnose`` and ``lr-sweep``: one grid, one schedule, one judge.

Every rate starts from the same weights and seed and trains on the same batch sequence. It runs
in two rungs (successive halving): every rate trains a quarter of the steps; a rate that
diverges is cut at once; the better half (and the user's own rate) is then trained to the
end; a rate is cut at the first rung only when it went non-finite or ran far above its start (a
rate that spikes early is judged where it ends). While the best rate sits on an edge of the grid,
the grid grows that way (half a decade at a time, up to ``sweep_max_decades`` from the user's
rate); when every rate diverges, it grows downwards; when no rate lowers the held-out loss and the
highest still trains stably, upwards. Rates are judged against each other by their held-out loss
(see :func:`recommend`).
A survivor is replayed from the snapshot rather than kept in memory: one copy of the weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nandoctor.state import preserved_rng, run_snapshot
from nandoctor.step import StepRaised
from nandoctor.sweep.judge import clearly_best, recommend, tie_margin
from nandoctor.sweep.plan import Plan, first_rung
from nandoctor.sweep.stacked import RateRunner
from nandoctor.sweep.stream import BatchStream
from nandoctor.sweep.training import BAD, TrainRun, evaluate, heldout_parts

#: rates the long rung may add beyond its lowest or highest while that one is clearly its best
LONG_EDGE_STEPS = 2


def snap(rate: float) -> float:
    """The nearest of 1 and 3 x 10^k in log space: grids read as 1e-4, 3e-4, 1e-3."""
    exponent = math.floor(math.log10(rate))
    options = [m * 10.0**e for e in (exponent - 1, exponent, exponent + 1) for m in (1, 3)]
    return float(f"{min(options, key=lambda o: abs(math.log10(o / rate))):.3g}")


def default_grid(user_lr: float, decades_down: int = 2, decades_up: int = 2) -> list[float]:
    """Half-decade rates from ``decades_down`` below the user's to ``decades_up`` above; the user's own is on it."""
    points = {snap(user_lr * 10 ** (k / 2)) for k in range(-2 * decades_down, 2 * decades_up + 1)}
    points.discard(snap(user_lr))
    return sorted(points | {user_lr})


def nearest_first(rates: list[float], center: float) -> list[float]:
    """The centre rate first, then the others by distance in log space (the most telling first)."""
    return sorted(rates, key=lambda r: (abs(math.log10(r / center)), r))


def checkpoints_for(steps: int) -> list[int]:
    """The two rungs: a quarter of the steps for every rate, all of them for the better half."""
    first = first_rung(steps)
    return [first, steps] if steps > first else [steps]


@dataclass(frozen=True)
class UserRun:
    """The sweep's run of the user's own rate, kept for the steps probe (it need not train it again)."""

    run: TrainRun
    stream: BatchStream  # the batches it trained on, step by step
    checkpoints: list[int]


@dataclass
class Sweep:
    runs: list[TrainRun]  # sorted by rate
    user_lr: float
    checkpoints: list[int]
    dropped: list[float] = field(default_factory=list)  # rates not run at all (time budget)
    not_continued: list[float] = field(default_factory=list)  # better-half rates the budget stopped early
    extended: list[str] = field(default_factory=list)  # how the grid grew, in words
    steps_run: int = 0
    fresh_batches: int = 0
    distinct_batches: int = 0
    heldout_batches: int = 0
    batches_per_step: int = 1  # under torchrun: a rank's batches each step accumulates (the effective batch)
    batch_note: str | None = None  # which batch the rates are for, under torchrun
    plan: dict[str, Any] = field(default_factory=dict)
    long_runs: list[TrainRun] = field(default_factory=list)  # the long rung: the best rate, the next lower, the edge
    long_note: str | None = None  # why the long rung did not run, when it was planned
    long_user: TrainRun | None = None  # the user's rate at the long rung, when it is not one of its rates
    short_best: float | None = None  # the best rate after the second rung, where the long rung started

    @property
    def user(self) -> TrainRun:
        return min(self.runs, key=lambda r: abs(math.log10(r.lr / self.user_lr)))


def run_sweep(
    ctx: Any,
    rates: list[float],
    steps: int | Plan,
    clip: float | None,
    progress: Callable[[str], None] = lambda message: None,
    budget_s: float | None = None,
    center: float | None = None,
    stream: BatchStream | None = None,
    extend: bool = True,
) -> Sweep:
    """The whole sweep from one snapshot; the model and RNG are restored after each run and at the end.

    ``steps``: a :class:`~nandoctor.sweep.plan.Plan` (how many steps, how many rates continued),
    or a number of steps with the full schedule. With
    ``budget_s``, a run that would end past the budget (judged by the time per step so far) is
    not started; the user's rate (``center``) always runs first. ``extend=False`` keeps exactly
    the rates given. The user's run, the stream and the checkpoints stay in ``ctx.shared["sweep_user"]``
    (a :class:`UserRun`: the steps probe reads them rather than training the user's rate again).
    A step that raises ends the sweep with :class:`~nandoctor.step.StepRaised` (exit 2): the user's
    code failed, and rates compared around that failure would say nothing.
    """
    import torch

    settings = ctx.settings
    plan = steps if isinstance(steps, Plan) else Plan(steps=steps, continued=None, guard_steps=steps)
    center = center if center is not None else ctx.setup.lr
    if plan.starting_rates is not None and extend:  # rates the user listed are all run
        rates = sorted(nearest_first(rates, center)[: plan.starting_rates])
    checkpoints = checkpoints_for(plan.steps)
    stream = stream or BatchStream(ctx, settings.sweep_stream_batches)
    snapshot = run_snapshot(ctx)
    result = Sweep(
        runs=[], user_lr=center, checkpoints=checkpoints, heldout_batches=len(stream.heldout), plan=plan.to_dict()
    )
    runs: dict[float, TrainRun] = {}
    runner = RateRunner(ctx, stream, clip, snapshot)  # several rates a pass where it can
    began = time.monotonic()

    def affordable(steps_needed: int) -> bool:
        if budget_s is None or not runner.steps_done:
            return True
        spent = time.monotonic() - began
        return spent + spent / runner.steps_done * steps_needed <= budget_s

    def run(rate: float, upto: list[int]) -> TrainRun:
        torch.manual_seed(settings.seed)
        progress(f"nandoctor: lr {rate:.3g}: {upto[-1]} steps")
        try:
            outcome = runner.train(rate, upto, start)
        finally:
            snapshot.restore()
        result.steps_run += len(outcome.losses)
        if outcome.failure is not None:
            raise StepRaised(
                outcome.failure,
                f"a training step raised {outcome.failure.error} (lr {rate:.3g}, "
                f"step {outcome.failure.step}; `nandoctor diagnose` says where)",
            )
        return outcome

    with preserved_rng():
        try:
            torch.manual_seed(settings.seed)
            start = dict(zip(("loss", "spread"), evaluate(ctx, stream.heldout)))
            start["parts"] = heldout_parts(ctx, stream.heldout)
            runner.expect(nearest_first(rates, center), checkpoints[:1])
            for rate in nearest_first(rates, center):
                if rate != center and not affordable(checkpoints[0]):
                    result.dropped.append(rate)
                    continue
                runs[rate] = run(rate, checkpoints[:1])
            if extend:
                _extend(runs, center, settings, result, lambda rate: run(rate, checkpoints[:1]), affordable)
            if len(checkpoints) > 1:
                runner.expect(_better_half(runs, center, checkpoints[0], plan.continued), checkpoints)
                for rate in _better_half(runs, center, checkpoints[0], plan.continued):
                    if not affordable(checkpoints[-1]):
                        result.not_continued.append(rate)
                        runs[rate].cut = "not continued: time budget"
                        continue
                    runs[rate] = run(rate, checkpoints)
                for rate, r in runs.items():
                    if r.cut is None and r.reached < checkpoints[-1] and not r.cut_short:
                        r.cut = f"worse half after {checkpoints[0]} steps"
                if plan.long_steps > checkpoints[-1]:
                    _long_rung(runs, result, checkpoints + [plan.long_steps], runner, run, affordable, settings, center)
        finally:
            snapshot.restore()
            result.plan["stacked"] = runner.summary()
    if center in runs:
        ctx.shared["sweep_user"] = UserRun(runs[center], stream, checkpoints)
    result.runs = sorted(runs.values(), key=lambda r: r.lr)
    result.fresh_batches, result.distinct_batches = stream.fresh_read, stream.distinct
    result.batches_per_step, result.batch_note = stream.group, stream.group_note
    return result


def _long_rung(
    runs: dict[float, TrainRun],
    result: Sweep,
    checkpoints: list[int],
    runner: RateRunner,
    run_rate: Callable[[float, list[int]], TrainRun],
    affordable: Callable[[int], bool],
    settings: Any,
    center: float,
) -> None:
    """The best rate after the second rung and its lower grid neighbour, each replayed to the long rung.

    Which rate is best moves down as runs grow longer (a high rate wins the first steps and then
    stalls or overfits): the recommendation is read where that has had time to show."""
    result.runs = sorted(runs.values(), key=lambda r: r.lr)
    chosen, _ = recommend(result, settings)
    ordered = [rate for rate in sorted(runs) if not runs[rate].cut_short and runs[rate].verdict not in BAD]
    if chosen is None or chosen.lr not in ordered:
        result.long_note = "no rate to refine: none learns after the second rung"
        return
    result.short_best, at = chosen.lr, ordered.index(chosen.lr)
    candidates = nearest_first(ordered[max(0, at - 1) : at + 1], chosen.lr)
    # the user's rate too, when it is lower and behind (in the same stacked pass where it can): is it
    # slower only in a short run?
    steps, best = checkpoints[-2], chosen.score_at(checkpoints[-2])
    mine = runs[center].score_at(steps) if center in ordered and center < chosen.lr else None
    behind = mine is not None and best is not None and mine > best + tie_margin(best, chosen.start_score, settings)
    user = center if behind and center not in candidates else None
    runner.expect(candidates + ([user] if user is not None else []), checkpoints)
    for _ in range(LONG_EDGE_STEPS + 1):
        for rate in candidates:
            if not affordable(checkpoints[-1]):
                result.long_note = f"the time budget stopped the long rung before lr {rate:.3g}"
                return
            result.long_runs.append(run_rate(rate, checkpoints))
        if user is not None and affordable(checkpoints[-1]):
            result.long_user, user = run_rate(user, checkpoints), None
        candidates = _long_edge(result.long_runs, ordered, checkpoints[-1], settings)


def _long_edge(long_runs: list[TrainRun], ordered: list[float], steps: int, settings: Any) -> list[float]:
    """The next rate beyond the long rung's lowest (or highest) when that one is clearly its best:
    the grid's next rate that way, or half a decade further. Empty when the best is inside."""
    tried = {r.lr: r for r in long_runs}
    rates = sorted(tried)
    usable = [rate for rate in rates if tried[rate].verdict not in BAD]
    if len(rates) < 2 or not usable:
        return []
    best = min(usable, key=lambda rate: tried[rate].score_at(steps))
    edge = 0 if best == rates[0] else -1 if best == rates[-1] else None
    if edge is None or not clearly_best(tried, rates, edge, steps, settings):
        return []
    beyond = [r for r in ordered if (r < best if edge == 0 else r > best)]
    step = (beyond[-1] if edge == 0 else beyond[0]) if beyond else snap(best * 10 ** (0.5 if edge else -0.5))
    return [step] if step not in tried else []


def _extend(
    runs: dict[float, TrainRun],
    center: float,
    settings: Any,
    result: Sweep,
    run_rate: Callable[[float], TrainRun],
    affordable: Callable[[int], bool],
) -> None:
    """Grow the grid half a decade at a time while the best rate is on an edge, nothing trains stably
    (down), or nothing lowers the held-out loss while the highest rate is stable (up)."""
    top, bottom = center * 10**settings.sweep_max_decades, center / 10**settings.sweep_max_decades
    steps = result.checkpoints[0]
    while True:
        ordered = sorted(runs)
        usable = [r for r in ordered if runs[r].verdict not in BAD]
        if not usable:
            step, reason = snap(ordered[0] / 10**0.5), "no rate trained stably"
        elif ordered[-1] in usable and not any(runs[r].moved(settings) for r in usable):
            step, reason = snap(ordered[-1] * 10**0.5), "no rate lowered the held-out loss"
        else:
            best = min(usable, key=lambda r: runs[r].score_at(steps))
            if best == ordered[-1] and clearly_best(runs, ordered, -1, steps, settings):
                step, reason = snap(ordered[-1] * 10**0.5), "the best rate was the highest tried"
            elif best == ordered[0] and clearly_best(runs, ordered, 0, steps, settings):
                step, reason = snap(ordered[0] / 10**0.5), "the best rate was the lowest tried"
            else:
                return
        if not bottom * 0.99 <= step <= top * 1.01 or step in runs:
            result.extended.append(
                f"stopped at {ordered[0]:.3g}..{ordered[-1]:.3g}: {reason}, and the grid "
                f"reaches {settings.sweep_max_decades} decades from the user's rate"
            )
            return
        if not affordable(steps):
            result.dropped.append(step)
            return
        result.extended.append(f"tried {step:.3g}: {reason}")
        runs[step] = run_rate(step)


def _better_half(runs: dict[float, TrainRun], center: float, steps: int, most: int | None = None) -> list[float]:
    """The rates continued past the first rung: the better half of those not cut (at most ``most``),
    and the user's. Only a run that went non-finite or ran far above its start is cut: one that
    spiked or rose early is ranked by its score like the others, and the user's is judged at the end."""

    def key(run: TrainRun) -> float:
        score = run.score_at(steps)
        return math.inf if score is None else score

    usable = sorted((r for r in runs.values() if not r.cut_short and key(r) < math.inf), key=key)
    half = max(1, math.ceil(len(usable) / 2))
    keep = {r.lr for r in usable[: half if most is None else min(half, most)]}
    if center in runs and not runs[center].cut_short:
        keep.add(center)
    return nearest_first(sorted(keep), center)


def sweep_rates(setup: Any, settings: Any) -> list[float]:
    """The starting grid of both commands (it grows while the best rate is on an edge)."""
    return default_grid(setup.lr, settings.sweep_decades_down, settings.sweep_decades_up)


def sweep_summary(sweep: Any, best: Any, why: str) -> dict[str, Any]:
    """The sweep as plain data: what ``lr-sweep`` prints and what the dynamics probe keeps as raw."""
    return {
        "user_run_lr": sweep.user.lr,
        "recommended_lr": best.lr if best else None,
        "why": why,
        "checkpoints": sweep.checkpoints,
        "steps_run": sweep.steps_run,
        "plan": sweep.plan,
        "batches": {
            "distinct_training": sweep.distinct_batches,
            "fresh_read": sweep.fresh_batches,
            "heldout": sweep.heldout_batches,
            "per_step": sweep.batches_per_step,
            **({"ranks_note": sweep.batch_note} if sweep.batch_note else {}),
        },
        "long_rung": {
            "steps": max((r.reached for r in sweep.long_runs), default=0),
            "rates": [r.lr for r in sweep.long_runs],
            "runs": [r.to_dict() for r in sweep.long_runs],
            "user_run": sweep.long_user.to_dict() if sweep.long_user is not None else None,
            **({"note": sweep.long_note} if sweep.long_note else {}),
        },
        "grid_extended": sweep.extended,
        "rates_not_run": sweep.dropped,
        "rates_not_continued": sweep.not_continued,
        "runs": [r.to_dict() for r in sweep.runs],
    }
