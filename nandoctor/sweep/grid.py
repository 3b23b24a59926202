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
from nandoctor.sweep.plan import Plan, first_rung
from nandoctor.sweep.stacked import RateRunner
from nandoctor.sweep.stream import BatchStream
from nandoctor.sweep.training import BAD, LEARNS, TrainRun, evaluate, heldout_parts

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
    long_runs: list[TrainRun] = field(default_factory=list)  # the long rung: the best rate and its neighbours
    long_note: str | None = None  # why the long rung did not run, when it was planned

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
                    _long_rung(runs, result, checkpoints + [plan.long_steps], runner, run, affordable, settings)
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
) -> None:
    """The best rate after the second rung and its grid neighbours, each replayed to the long rung.

    Which rate is best moves down as runs grow longer (a high rate wins the first steps and then
    stalls or overfits): the recommendation is read where that has had time to show."""
    result.runs = sorted(runs.values(), key=lambda r: r.lr)
    chosen, _ = recommend(result, settings)
    ordered = [rate for rate in sorted(runs) if not runs[rate].cut_short and runs[rate].verdict not in BAD]
    if chosen is None or chosen.lr not in ordered:
        result.long_note = "no rate to refine: none learns after the second rung"
        return
    at = ordered.index(chosen.lr)
    candidates = nearest_first(ordered[max(0, at - 1) : at + 2], chosen.lr)
    runner.expect(candidates, checkpoints)
    for _ in range(LONG_EDGE_STEPS + 1):
        for rate in candidates:
            if not affordable(checkpoints[-1]):
                result.long_note = f"the time budget stopped the long rung before lr {rate:.3g}"
                return
            result.long_runs.append(run_rate(rate, checkpoints))
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
    if edge is None or not _clearly_best(tried, rates, edge, steps, settings):
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
            if best == ordered[-1] and _clearly_best(runs, ordered, -1, steps, settings):
                step, reason = snap(ordered[-1] * 10**0.5), "the best rate was the highest tried"
            elif best == ordered[0] and _clearly_best(runs, ordered, 0, steps, settings):
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


def tie_margin(best: float, start: float | None, settings: Any) -> float:
    """Scores this close to the best tie: a share of the best rate's fall from the start, plus 0.1% of the start."""
    fall = max((start if start is not None else best) - best, 0.0)
    return settings.tie_tolerance * fall + 1e-3 * abs(start if start is not None else best)


def _clearly_best(runs: dict[float, TrainRun], ordered: list[float], edge: int, steps: int, settings: Any) -> bool:
    """The edge rate beats its neighbour by more than the tie tolerance (rates the optimizer ignores tie)."""
    if len(ordered) < 2:
        return True
    mine, neighbour = runs[ordered[edge]], runs[ordered[1 if edge == 0 else -2]]
    theirs = neighbour.score_at(steps) if neighbour.verdict not in BAD else math.inf
    score = mine.score_at(steps)
    return score < theirs - tie_margin(score, mine.start_score, settings)


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


def recommend(sweep: Sweep, settings: Any) -> tuple[TrainRun | None, str]:
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
    longest = max((r.reached for r in sweep.long_runs), default=0)
    long_pool = [r for r in sweep.long_runs if r.verdict not in BAD and r.reached >= longest]
    failed = {r.lr for r in sweep.long_runs if r.verdict in BAD}
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
        why += f" (the long rung: the best rate after {final} steps and its grid neighbours)"
    return chosen, why


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
            **({"note": sweep.long_note} if sweep.long_note else {}),
        },
        "grid_extended": sweep.extended,
        "rates_not_run": sweep.dropped,
        "rates_not_continued": sweep.not_continued,
        "runs": [r.to_dict() for r in sweep.runs],
    }
