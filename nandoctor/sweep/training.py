"""Short training runs from the snapshot, as the user trains: their optimizer, clipping, precision.

A run takes one step per batch of a :class:`~nandoctor.sweep.stream.BatchStream` (the same
sequence for every rate) and records, per step, the loss and the gradient norm before clipping;
at each checkpoint it scores the weights on the held-out batches (loss, and how much
the outputs still differ across samples: a collapsed model predicts the same for every input),
and on slices of them: a fall counts as learning only when it holds across the slices (a paired
comparison with the start), so a few percent of noise on one held-out batch is not "learning".
A loss that spikes in the first steps and then ends below its start is judged at the end.
Each run starts from the same weights and seed; the caller's snapshot restores them. A run
stops at once when it diverges.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from nandoctor.batches import iter_tensors, map_tensors
from nandoctor.step import StepLog, TrainingStep, fp16_scaler, fresh_optimizer, read_interval, run_steps, score

DIVERGED, UNSTABLE, COLLAPSED, LEARNS, FLAT = "diverged", "unstable", "collapsed", "learns", "flat"
BAD = (DIVERGED, UNSTABLE, COLLAPSED)


@dataclass(kw_only=True)
class TrainRun(StepLog):
    """One rate's run: its steps (losses, gradient norms before clipping, skips: the shared
    :class:`~nandoctor.step.StepLog`) and how it scored on the held-out batches."""

    lr: float
    clip: float | None
    steps: int  # steps asked for (the last checkpoint reached, unless it stopped early)
    blowup_step: int | None = None  # stopped here: the loss rose far above its start
    initial_loss: float | None = None  # first training batch, before any step
    heldout_initial: float | None = None
    spread_initial: float | None = None  # output spread across held-out samples, before any step
    heldout: dict[int, float] = field(default_factory=dict)  # held-out loss after N steps
    spread: dict[int, float] = field(default_factory=dict)
    parts_initial: list[float] | None = None  # held-out loss on each slice of the held-out batches, before any step
    parts: dict[int, list[float] | None] = field(default_factory=dict)  # ... after N steps
    fall_t: float | None = None  # the held-out fall over its standard error across slices (None: not measured)
    unseen_steps: int = 0  # steps before this one trained on a batch the run had not trained on before
    heldout_batches: int = 0
    verdict: str = FLAT
    drop: float = 0.0  # fall of the score from the start, as a share of the start
    cut: str | None = None  # why it was not continued to the last checkpoint

    @property
    def max_grad_norm(self) -> float | None:
        finite = [g for g in self.grad_norms if math.isfinite(g)]
        return max(finite) if finite else None

    @property
    def cut_short(self) -> bool:
        """Cut for good: non-finite, or the loss ran far above its start (the only reasons to cut at once)."""
        return self.nonfinite_step is not None or self.blowup_step is not None

    def moved(self, limits: Any) -> bool:
        """The held-out loss fell by more than its noise across slices (or, unmeasured, by ``learns_drop``)."""
        if self.verdict == LEARNS:
            return True
        if self.verdict in BAD:
            return False
        if self.fall_t is None:  # no slices to judge the noise by: only a fall that counts as learning
            return self.drop >= limits.learns_drop
        return self.drop >= limits.moves_drop and self.fall_t >= limits.learns_confidence

    @property
    def start_score(self) -> float | None:
        return self.heldout_initial if self.heldout_initial is not None else self.initial_loss

    def score_at(self, steps: int) -> float | None:
        """Loss on data not trained on after ``steps``, smoothed: the held-out batches together with the
        last quarter's training losses when those batches were new to the run (else the held-out alone).
        Without held-out batches: the mean training loss of the last quarter."""
        stopped = min((s for s in (self.nonfinite_step, self.blowup_step) if s is not None), default=None)
        if stopped is not None and stopped < steps:
            return math.inf
        quarter = max(1, steps // 4)
        tail = self.losses[steps - quarter : steps] if steps <= len(self.losses) else []
        if self.heldout_initial is None:
            return sum(tail) / len(tail) if tail and len(tail) == quarter else None
        held = self.heldout.get(steps)
        if held is None:
            return None
        unseen = tail if steps <= self.unseen_steps and len(tail) == quarter else []
        return (held * self.heldout_batches + sum(unseen)) / (self.heldout_batches + len(unseen))

    @property
    def reached(self) -> int:
        """The last checkpoint this run was scored at."""
        return max(self.heldout, default=0) if self.heldout_initial is not None else len(self.losses)

    @property
    def score(self) -> float | None:
        return (
            math.inf if self.nonfinite_step is not None or self.blowup_step is not None else self.score_at(self.reached)
        )

    @property
    def train_tail(self) -> float | None:
        """Mean training loss over the last quarter of the steps run: the second key of the ranking."""
        finite = [loss for loss in self.losses if math.isfinite(loss)]
        tail = finite[-max(1, len(finite) // 4) :]
        return sum(tail) / len(tail) if tail else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "clip": self.clip,
            "steps_run": len(self.losses),
            "verdict": self.verdict,
            "drop": self.drop,
            "fall_t": self.fall_t,
            "initial_loss": self.initial_loss,
            "final_loss": self.train_tail,
            "heldout_initial": self.heldout_initial,
            "heldout_final": self.heldout.get(self.reached),
            "heldout": {str(k): v for k, v in sorted(self.heldout.items())},
            "output_spread": {"initial": self.spread_initial, **{str(k): v for k, v in sorted(self.spread.items())}},
            "score": finite_or_none(self.score),
            "min_loss": min((loss for loss in self.losses if math.isfinite(loss)), default=None),
            "max_grad_norm": self.max_grad_norm,
            "nonfinite_step": self.nonfinite_step,
            "skipped_steps": self.skipped_steps,
            "cut": self.cut,
            "losses": self.losses,
            "grad_norms": self.grad_norms,
        }


def finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def evaluate(ctx: Any, batches: list[Any]) -> tuple[float | None, float | None]:
    """Mean held-out loss on ``batches`` and the outputs' spread across samples (:func:`nandoctor.step.score`)."""
    return score(ctx.setup, batches)


def batch_size(batch: Any) -> int | None:
    """Samples in a batch: dimension 0 of its first tensor."""
    return next((t.shape[0] for _, t in iter_tensors(batch) if t.dim() >= 1), None)


def heldout_parts(ctx: Any, batches: list[Any]) -> list[float] | None:
    """The loss on each of ``heldout_slices`` slices (along dimension 0) of every held-out batch:
    the samples a paired comparison needs. None when a batch cannot be sliced (too few samples, or
    the loss does not take a slice), a slice's loss is not finite, or the slices do not average to
    the batch's loss (not a mean over samples)."""
    parts: list[float] = []
    slices = ctx.settings.heldout_slices
    for batch in batches:
        size = batch_size(batch)
        if size is None or size < slices:
            return None
        bounds = [round(i * size / slices) for i in range(slices + 1)]
        for low, high in zip(bounds, bounds[1:]):
            piece = map_tensors(batch, lambda t: t[low:high] if t.dim() >= 1 and t.shape[0] == size else t)
            try:
                loss, _ = score(ctx.setup, [piece])
            except Exception:  # a loss that needs the whole batch (a flattened target, a fixed batch size)
                return None
            if loss is None or not math.isfinite(loss):
                return None
            parts.append(loss)
        # only a loss that is a mean over samples splits into slices that average to it (a contrastive
        # loss over the batch does not): otherwise the slices say nothing about this batch's noise
        whole, _ = score(ctx.setup, [batch])
        mean = sum(parts[-slices:]) / slices
        if whole is None or not math.isfinite(whole) or abs(mean - whole) > 0.05 * max(abs(whole), 1e-8):
            return None
    return parts or None


def fall_t(before: list[float] | None, after: list[float] | None) -> float | None:
    """Mean fall of the held-out loss across slices over its standard error (paired: same samples)."""
    if not before or not after or len(before) != len(after) or len(before) < 4:
        return None
    falls = [b - a for b, a in zip(before, after)]
    mean, error = statistics.fmean(falls), statistics.stdev(falls) / math.sqrt(len(falls))
    if error == 0:
        return math.copysign(math.inf, mean) if mean else 0.0
    return mean / error


def train(
    ctx: Any, stream: Any, lr: float, checkpoints: list[int], clip: float | None, start: dict[str, Any] | None = None
) -> TrainRun:
    """Up to ``checkpoints[-1]`` steps at ``lr`` from the current weights; the caller restores them.

    The held-out batches are scored after each checkpoint. ``start`` is the held-out score of
    these weights (:func:`evaluate`), when the caller already has it. A step that raises ends
    the run: ``run.failure`` records it (the caller decides what it means).
    """
    steps = checkpoints[-1]
    run = TrainRun(lr=lr, clip=clip, steps=steps)
    if start is None:
        start = dict(zip(("loss", "spread"), evaluate(ctx, stream.heldout)))
    run.heldout_initial, run.spread_initial = start["loss"], start["spread"]
    if "parts" not in start:  # the caller's dict keeps them for the next run from the same start
        start["parts"] = heldout_parts(ctx, stream.heldout)
    run.parts_initial = start["parts"]
    run.heldout_batches = len(stream.heldout)
    with fresh_optimizer(ctx.setup, lr) as optimizer:
        trainer = TrainingStep(
            ctx.setup,
            optimizer,
            clip,
            scaler=fp16_scaler(ctx.setup),
            read_every=read_interval(ctx.setup.device, ctx.settings.sweep_read_every),
        )

        def at_checkpoint(done: int) -> None:
            if stream.heldout:
                optimizer.zero_grad(set_to_none=True)  # the next step starts without them: no copy kept while scoring
                run.heldout[done], run.spread[done] = evaluate(ctx, stream.heldout)
                run.parts[done] = heldout_parts(ctx, stream.heldout) if run.parts_initial else None

        run_steps(
            trainer,
            run,
            steps,
            stream.train,
            lambda values: _stopped(run, values, trainer.scaled, ctx.settings),
            accumulate=stream.group,
            checkpoints=checkpoints,
            at_checkpoint=at_checkpoint,
        )
    if run.failure is not None:
        run.cut = run.failure.text
    run.unseen_steps = min(stream.distinct // stream.group, len(run.losses))
    classify(run, ctx.settings)
    return run


def _stopped(run: TrainRun, values: list[list[float]], scaled: bool, limits: Any) -> bool:
    """Record the steps read back (loss, gradient norm before clipping); True at the first that ends the
    run: non-finite (past GradScaler's calibration: :meth:`StepLog.add`) or the loss far above its start."""
    for loss_value, norm_value in values:
        step = len(run.losses)
        if run.initial_loss is None:
            run.initial_loss = loss_value
        if run.add(loss_value, norm_value, scaled, limits.amp_skip_limit):
            return True
        if math.isfinite(loss_value) and math.isfinite(norm_value) and blew_up(run, limits):
            run.blowup_step = step
            run.cut = f"stopped at step {step + 1}: the loss rose far above its start"
            return True
    return False


def blew_up(run: TrainRun, limits: Any) -> bool:
    """Stop a diverging rate early: the loss is far above where it started."""
    start = starting_level(run)
    return (
        start is not None
        and math.isfinite(start)
        and run.losses[-1] > start + limits.blowup_rise * max(abs(start), 1e-3)
    )


def starting_level(run: TrainRun) -> float | None:
    """The higher of the first batch's loss and the held-out loss before any step: one small batch's
    loss alone is too noisy a yardstick for "far above the start"."""
    known = [v for v in (run.initial_loss, run.heldout_initial) if v is not None and math.isfinite(v)]
    return max(known) if known else run.initial_loss


def classify(run: TrainRun, limits: Any) -> str:
    """diverged / unstable / collapsed / learns / flat, by the cut-offs in ``limits`` (dynamics settings)."""
    start = run.start_score  # the drop compares like with like: held-out batches before and after
    end = (
        run.score
        if run.score is None or not math.isfinite(run.score) or run.heldout_initial is None
        else run.heldout.get(run.reached)
    )
    if (
        run.nonfinite_step is not None
        or run.blowup_step is not None
        or end is None
        or not math.isfinite(end)
        or start is None
        or not math.isfinite(start)
    ):
        run.verdict = DIVERGED
        return run.verdict
    scale = max(abs(start), 1e-8)
    run.drop = (start - end) / scale
    run.fall_t = fall_t(run.parts_initial, run.parts.get(run.reached))
    real = run.fall_t is None or run.fall_t >= limits.learns_confidence  # not noise of one held-out batch
    first = starting_level(run) if starting_level(run) is not None else start
    # a spike (or a jump of the gradient norm) in the first half that the run recovers from, ending
    # clearly below its start, is early oscillation: judged by where the run ends, not cut
    recovered = run.drop >= limits.learns_drop and real
    late = len(run.losses) // 2 if recovered else 0
    spiked = any(loss > first + limits.spike_rise * max(abs(first), 1e-8) for loss in run.losses[late:])
    norms = [g for g in run.grad_norms if math.isfinite(g)]
    grew = len(norms) > 2 and norms[0] > 0 and max(norms[max(2, late) :], default=0) > limits.grad_growth * norms[0]
    spread = run.spread.get(run.reached)
    collapsed = (
        spread is not None
        and run.spread_initial is not None
        and spread < limits.collapse_spread * max(run.spread_initial, 1e-12)
    )
    if end > start + limits.diverged_rise * scale:
        run.verdict = DIVERGED
    elif spiked or grew:
        run.verdict = UNSTABLE
    elif collapsed and not recovered:
        # one output for every input while the held-out loss falls beyond its noise is the model learning
        # the marginal first (a language model's token frequencies), a phase; without that fall, a collapse
        run.verdict = COLLAPSED
    elif run.drop >= limits.learns_drop and real:
        run.verdict = LEARNS
    else:
        run.verdict = FLAT
    return run.verdict
