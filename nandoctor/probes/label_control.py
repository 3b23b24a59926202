"""The label control of the dynamics probe: the best rate trained again on targets permuted across samples.

Real targets that do no better than permuted ones carry no signal (``loss_plateau``). The control
is a measurement, not a rule on the loss's value: the same steps, the same rate, the targets shuffled.
"""

from __future__ import annotations

import math
from typing import Any

from nandoctor.context import RunContext
from nandoctor.findings import Finding, Fix, Setting, Severity, Where
from nandoctor.measure.trace import traced
from nandoctor.state import run_snapshot
from nandoctor.sweep.grid import Sweep
from nandoctor.sweep.stream import BatchStream, PermutedStream, target_paths
from nandoctor.sweep.training import BAD, TrainRun, evaluate, train

SETTINGS = (
    Setting(
        "plateau_margin",
        0.02,
        "loss_plateau: real targets beat targets permuted across samples by less than this share of the start",
    ),
    Setting(
        "plateau_clear_gap",
        0.25,
        "... a real run that did not lower the held-out loss (it overfits) still shows signal when the "
        "permuted run ends this share of the start above it",
    ),
)


def tail_mean(run: TrainRun, steps: int) -> float | None:
    """Mean training loss over the last quarter of the first ``steps`` steps."""
    tail = [loss for loss in run.losses[max(0, steps - max(1, steps // 4)) : steps] if math.isfinite(loss)]
    return sum(tail) / len(tail) if tail else None


def runs_away(run: TrainRun, settings: Any) -> bool:
    """The loss fell by more than ``blowup_rise`` times its starting scale: it has no floor (a likelihood
    with a learnable variance, a norm driven to zero), so how far it falls says nothing about the rate."""
    start, end = run.start_score, run.score
    return (
        start is not None
        and end is not None
        and math.isfinite(end)
        and start - end > settings.blowup_rise * max(abs(start), 1e-3)
    )


def label_control(
    ctx: RunContext,
    sweep: Sweep,
    best: TrainRun | None,
    stream: BatchStream,
    needed: bool = True,
    stuck: bool = False,
) -> tuple[list[Finding], dict[str, Any]]:
    """Train the best rate again on targets permuted across samples; no better with real ones: no signal.

    The control run is skipped when its answer could change nothing: no plateau is possible (the
    held-out loss fell, or no rate fitted even its training batches) and no warning hangs on it
    (``needed``). ``stuck`` (no rate lowered the held-out loss): it always runs, and decides whether
    the targets are the cause."""
    import torch

    stable = [r for r in sweep.runs if r.verdict not in BAD]
    # without a recommendation: the rate that fits its training batches best (the control asks
    # whether real targets fit better than shuffled ones)
    reference = best or max(
        (r for r in stable if r.initial_loss is not None and r.train_tail is not None),
        key=lambda r: (r.reached, r.initial_loss - r.train_tail),
        default=None,
    )
    if reference is None or not any((r.max_grad_norm or 0) > 0 for r in stable):
        return [], {}
    fits = max(
        (
            (r.initial_loss - r.train_tail) / max(abs(r.initial_loss), 1e-8)
            for r in stable
            if r.initial_loss is not None and r.train_tail is not None
        ),
        default=0.0,
    )
    if not needed and not stuck and (reference.drop >= ctx.settings.learns_drop or fits < ctx.settings.learns_drop):
        return [], {
            "lr": reference.lr,
            "heldout_drop": reference.drop,
            "train_fall": fits,
            "skipped": "no plateau is possible: the held-out loss fell, or no rate fitted its "
            "training batches; and no warning depends on the control",
        }
    paths = target_paths(ctx.batches[0], traced(ctx)[0].consumed_paths)
    if not paths:
        return [], {"skipped": "no batch tensor is left unread by the forward: no target to permute"}
    checkpoints = [c for c in sweep.checkpoints if c <= reference.reached] or sweep.checkpoints[:1]
    snapshot = run_snapshot(ctx)
    try:
        torch.manual_seed(ctx.settings.seed)
        start = dict(zip(("loss", "spread"), evaluate(ctx, stream.heldout)))
        torch.manual_seed(ctx.settings.seed)
        control = train(
            ctx,
            PermutedStream(stream, paths, ctx.settings.seed),
            reference.lr,
            checkpoints,
            ctx.setup.grad_clip,
            start,
        )
    finally:
        snapshot.restore()
    steps = min(reference.reached, control.reached) or len(control.losses)
    real = {"heldout": reference.score_at(steps), "train": tail_mean(reference, steps)}
    permuted = {"heldout": control.score_at(steps), "train": tail_mean(control, steps)}
    margin = ctx.settings.plateau_margin * abs(reference.start_score or reference.initial_loss or 1.0)
    raw = {
        "lr": reference.lr,
        "steps": steps,
        "permuted_paths": sorted(paths),
        "real": real,
        "permuted": permuted,
        "margin": margin,
        "control_verdict": control.verdict,
    }
    if control.losses == reference.losses[: len(control.losses)] or runs_away(reference, ctx.settings):
        # the shuffled tensors change nothing (not what the loss compares against), or the loss
        # has no floor: the control cannot tell
        return [], dict(raw, inconclusive=True)
    start = reference.start_score
    # held-out data speaks for the real targets where they lowered it, or where the shuffled run ends
    # far above them (a real run that overfits its few batches): one that rose a little less than the
    # shuffled one did is noise, not signal
    clear = ctx.settings.plateau_clear_gap * abs(start or 1.0)
    signal = any(
        real[k] is not None
        and permuted[k] is not None
        and permuted[k] - real[k] > margin
        and (k == "train" or start is None or real[k] < start - margin or permuted[k] - real[k] > clear)
        for k in ("heldout", "train")
    )
    raw.update(signal=signal, heldout_drop=reference.drop, train_fall=fits)
    # the signature of targets disconnected from their inputs: the training batches can be fitted,
    # held-out data does not improve, and shuffled targets do as well; anything else is not a plateau
    if (
        signal
        or control.nonfinite_step is not None
        or reference.drop >= ctx.settings.learns_drop
        or (fits < ctx.settings.learns_drop and not stuck)
    ):
        return [], raw
    detail = (
        f"at lr {reference.lr:.3g}, {steps} steps on the real targets end at held-out loss "
        f"{_g(real['heldout'])} (training {_g(real['train'])}); the same steps with "
        f"{', '.join(sorted(paths))} shuffled across samples end at {_g(permuted['heldout'])} "
        f"(training {_g(permuted['train'])})"
    )
    if stuck:
        raw["no_rate_moved"] = True
    return [
        Finding(
            "loss_plateau",
            Severity.CRITICAL,
            f"the model learns no more from the real targets than from shuffled ones: {detail}",
            Where(),
            raw,
            Fix(
                advice="The targets carry no signal the model can use: check that labels stay aligned with their "
                "inputs (shuffled together, same order, same join key), that targets are not constant, "
                "and the findings ranked above this one."
            ),
        )
    ], raw


def no_learning(sweep: Sweep, table: dict[str, Any], settings: Any, nothing_moved: bool = True) -> Finding:
    """No rate lowered the held-out loss beyond its noise, and no measurement named a cause: critical,
    never healthy. Causes measured elsewhere (inputs, targets, the gradient path) fold this under them.
    ``nothing_moved`` False: some rate moved it for a while, none trained to the end and the user's
    did not move: a warning with the same table."""
    tried = ", ".join(f"{r.lr:.3g} {r.verdict}" for r in sweep.runs)
    start = next((r.start_score for r in sweep.runs if r.start_score is not None), None)
    best = min(
        (r for r in sweep.runs if r.score is not None and math.isfinite(r.score)), key=lambda r: r.score, default=None
    )
    closest = (
        f"; the best, lr {best.lr:.3g}, ends at {best.score:.4g} from {_g(start)} ({best.drop:+.1%})" if best else ""
    )
    if nothing_moved:
        title = (
            f"no learning rate from {sweep.runs[0].lr:.3g} to {sweep.runs[-1].lr:.3g} lowered the held-out loss "
            f"beyond its noise in {sweep.checkpoints[-1]} steps{closest}"
        )
    else:
        moved = ", ".join(f"{r.lr:.3g} ({r.drop:+.1%} by step {r.reached})" for r in sweep.runs if r.moved(settings))
        title = (
            f"lr {sweep.user.lr:.3g} does not lower the held-out loss beyond its noise, and no rate from "
            f"{sweep.runs[0].lr:.3g} to {sweep.runs[-1].lr:.3g} trains to the end of {sweep.checkpoints[-1]} steps "
            f"(moved for a while: {moved})"
        )
    return Finding(
        "loss_plateau",
        Severity.CRITICAL if nothing_moved else Severity.WARNING,
        title,
        Where(),
        {
            "no_rate_moved": nothing_moved,
            "no_rate_trained": True,
            "heldout_initial": start,
            "rates": tried,
            "grid_extended": sweep.extended,
            "sweep": table,
        },
        Fix(
            advice="Nothing measured names the cause (the findings ranked above, if any, are the first "
            "suspects). Check, in order: that the loss reads the model's output (no detach, no_grad or "
            ".item() on the way), that targets are in the range and shape the loss expects, that labels "
            "stay aligned with their inputs, and the rate: the sweep tried every rate listed."
        ),
    )


def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
