"""Training dynamics: the learning-rate sweep's verdicts, the clipping audit and the label control.

The sweep (``nandoctor.sweep.grid``) judges every rate against the others on held-out batches
from the same start; this probe turns its table into findings: the user's rate diverges or ends
clearly worse than another rate. ``loss_plateau`` is decided by a control run: the same training
with the targets permuted across samples. Real targets that do no better than permuted ones
carry no signal. A run where no rate lowers the held-out loss beyond its noise is never healthy:
the control names the targets when it can, else a critical ``loss_plateau`` with the table, folded
under any cause measured elsewhere (inputs, targets, the gradient path). A rate finding's fix carries
``fix.verified``: the sweep's own run at the recommended rate against the user's.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import replace
from typing import Any

from nandoctor.config import GRAD_CLIP, fix_config
from nandoctor.context import RunContext
from nandoctor.conventions import plays_a_game
from nandoctor.findings import CodeDoc, Finding, Fix, Severity, Stage, Where
from nandoctor.probes.base import Cost, Fact, Fold, Phase, Probe, ProbeResult, Setting, nothing_to_train
from nandoctor.probes.label_control import SETTINGS as LABEL_CONTROL_SETTINGS
from nandoctor.probes.label_control import label_control, no_learning, runs_away
from nandoctor.probes.rate_fixes import nice_below, rate_fix, slow_at_the_long_rung
from nandoctor.state import run_snapshot
from nandoctor.step import StepRaised
from nandoctor.sweep.grid import Sweep, recommend, run_sweep, sweep_rates, sweep_summary
from nandoctor.sweep.plan import plan_note, plan_sweep
from nandoctor.sweep.stream import BatchStream
from nandoctor.sweep.training import BAD, COLLAPSED, DIVERGED, LEARNS, TrainRun, finite_or_none, train

# measured causes that leave the loss flat: each explains a plateau when it is more than a note
PLATEAU_CAUSES = (
    "no_gradient_path",
    "target_out_of_range",
    "loss_shape_mismatch",
    "unnormalized_input",
    "label_out_of_range",
    "vanishing_gradients",
    "saturation",
    "dead_units",
)


def not_a_note(cause: Finding, symptom: Finding) -> bool:
    return cause.severity != Severity.INFO


def _table(sweep: Sweep) -> dict[str, Any]:
    """The per-rate table a finding's evidence carries."""
    return {
        f"{r.lr:.3g}": {
            "verdict": r.verdict,
            "steps_run": len(r.losses),
            "heldout_final": r.heldout.get(r.reached),
            "train_loss_end": r.train_tail,
            "drop": round(r.drop, 4),
            "max_grad_norm": r.max_grad_norm,
            "nonfinite_step": r.nonfinite_step,
            "cut": r.cut,
        }
        for r in sweep.runs
    }


class DynamicsProbe(Probe):
    name = "dynamics"
    description = "LR sweep judged on held-out batches: LR too high/low, clipping, labels against a shuffled control"
    phase = Phase.TRAINING
    cost = Cost.TRAINS
    requires = (Fact.FORWARD_OK, Fact.BACKWARD_OK, Fact.AUTOCAST_RUNS)
    codes = (
        CodeDoc(
            "lr_too_high",
            Stage.RATE_TOO_HIGH,
            "the learning rate sweep shows the user's rate diverges or is unstable where a lower one trains",
            "Each step overshoots; the loss climbs or goes NaN.",
            "AdamW at 1e-3 on a transformer whose gradients reach 4e8.",
            "Use the recommended rate from the sweep.",
        ),
        CodeDoc(
            "lr_too_low",
            Stage.RATE_TOO_LOW,
            "the loss barely moves at the user's rate where a higher one trains stably",
            "Training wastes compute or never leaves the initial plateau.",
            "SGD at 1e-5.",
            "Use the recommended rate from the sweep.",
        ),
        CodeDoc(
            "grad_clip_too_aggressive",
            Stage.CLIPPING,
            "clipping scales nearly every step's gradient down by a large factor",
            "Every update is shrunk to max_norm: effectively a much smaller LR.",
            "clip_grad_norm_(max_norm=1.0) where gradient norms are in the thousands.",
            "Raise max_norm to about the observed median norm, and fix what makes norms large.",
        ),
        CodeDoc(
            "loss_plateau",
            Stage.NO_SIGNAL,
            "the loss stays at its random-guess baseline and does not decrease",
            "The model learns nothing: often labels disconnected from inputs, or a dead signal path.",
            "Labels shuffled apart from their inputs: training fits them no better than permuted ones.",
            "Check that labels match inputs, the LR, and the findings ranked above this one.",
        ),
    )
    folds = (
        *(Fold(cause, "loss_plateau", not_a_note) for cause in PLATEAU_CAUSES),
        Fold("grad_clip_too_aggressive", "loss_plateau"),  # every step shrunk: the loss cannot move
        Fold("grad_clip_too_aggressive", "lr_too_low"),
    )

    settings = LABEL_CONTROL_SETTINGS + (
        Setting(
            "sweep_budget_s",
            120.0,
            "LR sweep in diagnose: runs that would end past this many seconds are dropped "
            "(the verdict is then incomplete)",
        ),
        Setting(
            "lr_worse_gap",
            0.3,
            "lr_too_high/low: the user's rate misses this share of the best rate's fall in held-out loss ...",
        ),
        Setting("lr_worse_loss", 0.1, "... and ends this share above the best rate's held-out loss"),
        Setting(
            "lr_far_decades",
            3.0,
            "lr_too_low for a rate that moves the loss (slowly): the best rate lies this many decades above it",
        ),
        Setting("clip_share", 0.9, "grad_clip_too_aggressive: share of steps whose gradient is clipped"),
        Setting("clip_factor", 10.0, "... by at least this median factor"),
    )

    def run(self, ctx: RunContext) -> ProbeResult:
        settings, setup = ctx.settings, ctx.setup
        idle = nothing_to_train(ctx)
        if idle is not None:
            return idle
        if plays_a_game(ctx.model):
            return ProbeResult(
                [],
                {
                    "skipped": "the training step steps several optimizers by hand (a game, as in a "
                    "GAN): no summed loss has to fall, so no rate is judged by it"
                },
            )
        stream = BatchStream(ctx, settings.sweep_stream_batches)
        rates = sweep_rates(setup, settings)
        try:
            sweep = run_sweep(
                ctx,
                rates,
                plan_sweep(ctx, len(rates)),
                setup.grad_clip,
                budget_s=settings.sweep_budget_s,
                center=setup.lr,
                stream=stream,
            )
        except StepRaised as raised:  # the user's step, not ours: the run stops there, as the steps probe's does
            return ProbeResult([], {"stopped": raised.failure.text}, incomplete=f"a training {raised.failure.text}")
        best, why = recommend(sweep, settings)
        ctx.shared["sweep_recommended_lr"] = (
            best.lr if best is not None else None
        )  # the steps probe's lower-rate control
        raw: dict[str, Any] = {"user_lr": setup.lr, **sweep_summary(sweep, best, why)}
        lr_findings = self._lr(ctx, sweep, best, why)
        # which rate "wins" on noise says nothing: a control that finds no signal drops the warnings
        droppable = [f for f in lr_findings if "compared_at_steps" in f.evidence]  # judged against another rate
        stuck = best is None and not any(r.moved(settings) for r in sweep.runs)  # nothing lowered the held-out loss
        # no rate trains to the end and the user's does not move (a large fall that is only noisy is no
        # answer either way): silence would say "healthy"
        user = sweep.user
        unanswered = best is None and not user.moved(settings) and user.drop < settings.learns_drop
        # the control trains as long as the short runs: against the best of those, not the long rung's pick
        short = next((r for r in sweep.runs if r.lr == sweep.short_best), best)
        plateau, raw["control"] = label_control(ctx, sweep, short, stream, needed=bool(droppable), stuck=unanswered)
        no_signal = raw["control"].get("signal") is False
        findings = [f for f in lr_findings if not (no_signal and any(f is d for d in droppable))]
        if unanswered and not plateau and not any(f.code == "lr_too_high" for f in findings):
            plateau = [no_learning(sweep, _table(sweep), settings, nothing_moved=stuck)]
        raw["no_rate_moved"] = stuck
        clip_findings, raw["clip"] = self._clip(ctx, sweep, stream)
        findings += clip_findings + plateau
        note = plan_note(sweep.plan)
        if note:  # a verdict from short runs says so; short runs favour the higher rates (a slower one has
            # had no time) and give the label control little to go on: "too low" and "no signal" are hints
            findings = [
                replace(
                    f,
                    severity=Severity.INFO
                    if f.code in ("lr_too_low", "loss_plateau") and not f.evidence.get("no_rate_moved")
                    else f.severity,
                    evidence={**f.evidence, "sweep_plan": note},
                    fix=replace(f.fix, advice=f"{f.fix.advice} Note: {note}."),
                )
                for f in findings
            ]
        dropped = sweep.dropped + sweep.not_continued
        incomplete = None
        if dropped:
            incomplete = (
                f"the {settings.sweep_budget_s:g}s sweep budget was spent: rates "
                f"{', '.join(f'{r:.3g}' for r in sorted(dropped))} were not judged to the end"
            )
            for finding in findings:
                finding.evidence["rates_not_judged"] = sorted(dropped)
        return ProbeResult(findings, raw, incomplete=incomplete)

    def _lr(self, ctx: RunContext, sweep: Sweep, best: TrainRun | None, why: str) -> list[Finding]:
        user, settings = sweep.user, ctx.settings
        evidence = {
            "user_lr": user.lr,
            "user_verdict": user.verdict,
            "user_heldout": user.score,
            "recommended_lr": best.lr if best else None,
            "recommended_heldout": best.score if best else None,
            "heldout_initial": user.start_score,
            "grid_extended": sweep.extended,
            "sweep": _table(sweep),
        }
        if user.verdict in BAD:
            return [self._too_high_bad(ctx, sweep, user, best, why, evidence)]
        if best is None or best.lr == user.lr:
            return []
        # the short runs show the gap (the best rate after the second rung); the fix is the recommendation
        shown = next((r for r in sweep.runs if r.lr == sweep.short_best), best)
        if shown.lr == user.lr or (shown.lr < user.lr) != (best.lr < user.lr):
            return []  # the long rung and the short runs disagree on the side: no finding either way
        steps = min(user.reached, shown.reached)
        mine, theirs, start = user.score_at(steps), shown.score_at(steps), user.start_score
        if mine is None or theirs is None or start is None:
            return []
        if runs_away(shown, settings):
            return []
        fall = max(start - theirs, 1e-12)
        missed = (mine - theirs) / fall
        worse = mine - theirs >= settings.lr_worse_loss * (abs(theirs) + 0.01 * abs(start))
        if missed < settings.lr_worse_gap or not worse:
            return []
        evidence.update(compared_at_steps=steps, share_of_fall_missed=missed)
        what = "held-out" if user.heldout_initial is not None else "training"
        numbers = (
            f"after {steps} steps its {what} loss is {mine:.4g} against {theirs:.4g} at lr {shown.lr:.3g} "
            f"(from {start:.4g}: it misses {missed:.0%} of that fall)"
        )
        if best.lr < user.lr:
            return [
                Finding(
                    "lr_too_high",
                    Severity.WARNING,
                    f"lr {user.lr:.3g} is too high: {numbers}",
                    Where(),
                    evidence,
                    rate_fix(ctx, user, best, steps, f"Lower the learning rate to {best.lr:.3g}: {why}."),
                )
            ]
        # it trains, only slower in a short run, which favours high rates; unless the rate that trains is
        # decades above it (SGD at 1e-5 where 0.1 trains: it moves, and would take thousands of times longer)
        far = shown.lr >= user.lr * 10**settings.lr_far_decades
        if (user.drop >= settings.learns_drop or user.moved(settings)) and not far:
            gap, worse = settings.lr_worse_gap, settings.lr_worse_loss
            return slow_at_the_long_rung(ctx, sweep, best, why, evidence, gap, worse)
        return [
            Finding(
                "lr_too_low",
                # a run that does not move at all never trains as configured; one that moves a little is slow
                Severity.CRITICAL if user.drop < settings.moves_drop else Severity.WARNING,
                f"lr {user.lr:.3g} is too low: {numbers}",
                Where(),
                evidence,
                rate_fix(ctx, user, best, steps, f"Raise the learning rate to {best.lr:.3g}: {why}."),
            )
        ]

    @staticmethod
    def _too_high_bad(
        ctx: RunContext, sweep: Sweep, user: TrainRun, best: TrainRun | None, why: str, evidence: dict[str, Any]
    ) -> Finding:
        """The user's own rate diverges, is unstable or collapses: always a finding, a better rate or not."""
        if user.nonfinite_step is not None:
            how, severity = f"goes non-finite at step {user.nonfinite_step}", Severity.CRITICAL
        elif user.verdict == DIVERGED:
            how, severity = "drives the loss far above where it started", Severity.CRITICAL
        elif user.verdict == COLLAPSED:
            how, severity = "collapses the model to the same output for every input", Severity.CRITICAL
        else:
            how, severity = f"is unstable (loss spikes; max grad norm {user.max_grad_norm:.3g})", Severity.WARNING
        if best is not None and best.lr < user.lr:
            title = (
                f"training at lr {user.lr:.3g} {how}; {best.lr:.3g} trains "
                f"(held-out loss {best.start_score:.4g} -> {best.score:.4g})"
            )
            return Finding(
                "lr_too_high",
                severity,
                title,
                Where(),
                evidence,
                rate_fix(ctx, user, best, best.reached, f"Lower the learning rate to {best.lr:.3g}: {why}."),
            )
        lowest = sweep.runs[0].lr
        tried = ", ".join(f"{r.lr:.3g} {r.verdict}" for r in sweep.runs)
        title = f"training at lr {user.lr:.3g} {how}, and no rate down to {lowest:.3g} trained ({tried})"
        return Finding(
            "lr_too_high",
            severity,
            title,
            Where(),
            evidence,
            Fix(
                advice=f"Lower the learning rate well below {user.lr:.3g}; no rate down to {lowest:.3g} "
                f"trained in {sweep.checkpoints[-1]} steps ({'; '.join(sweep.extended) or 'grid'}), "
                f"so also check the findings above (inputs, initialisation, the loss)."
            ),
        )

    def _clip(self, ctx: RunContext, sweep: Sweep, stream: BatchStream) -> tuple[list[Finding], dict[str, Any]]:
        clip, user = ctx.setup.grad_clip, sweep.user
        norms = [g for g in user.grad_norms if math.isfinite(g)]
        if clip is None or not norms or user.verdict == DIVERGED:
            return [], {}
        share = sum(g > clip for g in norms) / len(norms)
        factor = statistics.median(g / clip for g in norms)
        raw = {
            "max_norm": clip,
            "share_clipped": share,
            "median_clip_factor": factor,
            "median_grad_norm": statistics.median(norms),
        }
        if share < ctx.settings.clip_share or factor < ctx.settings.clip_factor:
            return [], raw
        suggestion, checked = self._verified_clip(ctx, sweep, stream, statistics.median(norms))
        raw["candidates"] = checked
        config, note = fix_config(ctx.setup, GRAD_CLIP, suggestion)
        verified = next((c for c in checked if c["max_norm"] == suggestion and c["verdict"] == LEARNS), None)
        tried = next((c for c in checked if c["max_norm"] == suggestion), None)
        rerun = None
        if tried is not None:
            rerun = {
                "steps": tried["steps"],
                "before": finite_or_none(user.score_at(tried["steps"])),
                "after": tried["heldout"],
                "ok": verified is not None,
            }
        advice = (
            f"Raise max_norm to {suggestion:g}, near the median gradient norm {raw['median_grad_norm']:.3g}"
            + (
                f": a {sweep.checkpoints[-1]}-step run with it learns (held-out loss down {verified['drop']:.0%} "
                f"vs {user.drop:.0%})"
                if verified
                else " (no candidate learned in a short run: check the findings above)"
            )
            + f"; clip to guard against spikes, not every step.{note}"
        )
        return [
            Finding(
                "grad_clip_too_aggressive",
                Severity.WARNING,
                f"clipping at max_norm={clip:g} scales {share:.0%} of steps down, by a median factor of {factor:,.3g}",
                Where(),
                dict(raw, user_drop=user.drop),
                Fix(config, advice, rerun),
            )
        ], raw

    @staticmethod
    def _verified_clip(
        ctx: RunContext, sweep: Sweep, stream: BatchStream, median_norm: float
    ) -> tuple[float, list[dict[str, Any]]]:
        """Try max_norm near the median norm, then 10x and 100x lower; keep the largest that learns."""
        import torch

        user = sweep.user
        candidates = [c for c in (nice_below(median_norm / 10**k) for k in range(3)) if c > ctx.setup.grad_clip]
        checked = []
        snapshot = run_snapshot(ctx)
        try:
            for candidate in candidates:
                torch.manual_seed(ctx.settings.seed)
                run = train(ctx, stream, user.lr, sweep.checkpoints, candidate)
                snapshot.restore()
                checked.append(
                    {
                        "max_norm": candidate,
                        "verdict": run.verdict,
                        "drop": run.drop,
                        "heldout": finite_or_none(run.score_at(run.reached)),
                        "steps": run.reached,
                    }
                )
                if run.verdict == LEARNS and run.drop > user.drop + 0.02:
                    return candidate, checked
        finally:
            snapshot.restore()
        return (candidates[0] if candidates else ctx.setup.grad_clip * 10), checked
