"""Training dynamics: a short LR sweep, the clipping audit and the plateau check.

Every run starts from the same weights and seed and trains on all cached batches but the
last; the last is held out, so a loss that falls in training but not on unseen data (labels
disconnected from inputs) is told apart from one that really learns.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from nandoctor.config import fix_config
from nandoctor.findings import CodeDoc, Finding, Fix, Severity, Where
from nandoctor.probes.base import Fact, Setting, Fold, Probe, ProbeResult
from nandoctor.state import ModelSnapshot
from nandoctor.sweep.grid import decade_grid, nearest, recommend, run_sweep
from nandoctor.measure.trace import traced
from nandoctor.sweep.training import DIVERGED, FLAT, LEARNS, UNSTABLE, TrainRun, train


def nice_below(value: float) -> float:
    """The largest of 1, 2, 5 x 10^k not above ``value``."""
    exponent = math.floor(math.log10(value))
    for mantissa in (5, 2, 1):
        if mantissa * 10 ** exponent <= value:
            return float(f"{mantissa * 10 ** exponent:.3g}")
    return float(f"{10 ** exponent:.3g}")


def random_guess_baseline(ctx: Any, initial: float | None) -> dict[str, Any] | None:
    """ln(classes) for a classifier's cross-entropy, pi/2 for an angle between random directions."""
    if initial is None or not math.isfinite(initial):
        return None
    width = traced(ctx)[0].root_width
    if width and width >= 2 and abs(initial - math.log(width)) <= 0.15 * math.log(width):
        return {"kind": "cross-entropy over classes", "classes": width, "value": math.log(width)}
    if abs(initial - math.pi / 2) <= 0.1 * math.pi / 2:
        return {"kind": "angle between random unit vectors (rad)", "value": math.pi / 2}
    return None


class DynamicsProbe(Probe):
    name = "dynamics"
    description = "short LR sweep from the user's settings: LR too high/low, clipping, loss plateau"
    order = 60
    requires = (Fact.FORWARD_OK, Fact.BACKWARD_OK, Fact.AUTOCAST_RUNS)
    codes = (
        CodeDoc("lr_too_high", 16,
                "the learning rate sweep shows the user's rate diverges or is unstable where a lower one trains",
                "Each step overshoots; the loss climbs or goes NaN.",
                "AdamW at 1e-3 on a transformer whose gradients reach 4e8.",
                "Use the recommended rate from the sweep."),
        CodeDoc("lr_too_low", 17,
                "the loss barely moves at the user's rate where a higher one trains stably",
                "Training wastes compute or never leaves the initial plateau.",
                "SGD at 1e-5.",
                "Use the recommended rate from the sweep."),
        CodeDoc("grad_clip_too_aggressive", 15,
                "clipping scales nearly every step's gradient down by a large factor",
                "Every update is shrunk to max_norm: effectively a much smaller LR.",
                "clip_grad_norm_(max_norm=1.0) where gradient norms are in the thousands.",
                "Raise max_norm to about the observed median norm, and fix what makes norms large."),
        CodeDoc("loss_plateau", 18,
                "the loss stays at its random-guess baseline and does not decrease",
                "The model learns nothing: often labels disconnected from inputs, or a dead signal path.",
                "An angular loss stuck at ~1.5 rad (pi/2, random directions).",
                "Check that labels match inputs, the LR, and the findings ranked above this one."),
    )
    folds = (
        Fold("grad_clip_too_aggressive", "loss_plateau"),  # every step shrunk: the loss cannot move
        Fold("grad_clip_too_aggressive", "lr_too_low"),
    )

    settings = (
        Setting("sweep_steps", 20, "training dynamics in diagnose: steps per rate of the short LR sweep"),
        Setting("sweep_decades_down", 2, "... rates user_lr * 10**k for k from -down ..."),
        Setting("sweep_decades_up", 3, "... to +up (three up: SGD at 1e-5 needs a far higher rate)"),
        Setting("sweep_budget_s", 120.0, "... nearest rates first; rates that would end past this many seconds are dropped"),
        Setting("learns_drop", 0.05, "a run learns when its loss falls by at least this share of the start"),
        Setting("diverged_rise", 0.5, "a run diverged when its loss ends this share above its start"),
        Setting("spike_rise", 2.0, "a run is unstable when a step's loss rises this many times the start's scale above it"),
        Setting("grad_growth", 100.0, "... or its gradient norm grows this many times over the first step's"),
        Setting("blowup_rise", 10.0, "a run stops early once its loss is this many times the start's scale above it"),
        Setting("lr_low_drop", 0.1, "lr_too_low: a higher rate brings the loss down by at least this share ..."),
        Setting("lr_low_ratio", 4.0, "... and by this many times the user's drop"),
        Setting("plateau_heldout_drop", 0.01, "loss_plateau: a held-out loss that falls by this share is no plateau"),
        Setting("clip_share", 0.9, "grad_clip_too_aggressive: share of steps whose gradient is clipped"),
        Setting("clip_factor", 10.0, "... by at least this median factor"),
    )

    def run(self, ctx: Any) -> ProbeResult:
        settings, setup = ctx.settings, ctx.setup
        rates = decade_grid(setup.lr, settings.sweep_decades_down, settings.sweep_decades_up)
        runs = run_sweep(ctx, rates, settings.sweep_steps, setup.grad_clip,
                         budget_s=settings.sweep_budget_s, center=setup.lr)
        user = nearest(runs, setup.lr)
        best, why = recommend(runs)
        raw: dict[str, Any] = {"runs": [r.to_dict() for r in runs], "user_lr": setup.lr,
                               "rates_not_run": sorted(set(rates) - {r.lr for r in runs}),
                               "recommended_lr": best.lr if best else None, "why": why}
        findings = []
        findings += self._lr(ctx, user, best, why, runs)
        clip_findings, raw["clip"] = self._clip(ctx, user)
        findings += clip_findings
        findings += self._plateau(ctx, runs, user)
        return ProbeResult(findings, raw)

    @staticmethod
    def _table(runs: list[TrainRun]) -> dict[str, Any]:
        return {f"{r.lr:.3g}": {"verdict": r.verdict, "drop": round(r.drop, 4), "max_grad_norm": r.max_grad_norm,
                                "nonfinite_step": r.nonfinite_step} for r in runs}

    def _lr(self, ctx: Any, user: TrainRun, best: TrainRun | None, why: str, runs: list[TrainRun]) -> list[Finding]:
        if best is None or best.lr == user.lr:
            return []
        config, note = fix_config(ctx.setup, "lr", best.lr)
        evidence = {"user_lr": user.lr, "user_verdict": user.verdict, "user_drop": user.drop,
                    "user_max_grad_norm": user.max_grad_norm, "recommended_lr": best.lr,
                    "recommended_drop": best.drop, "sweep": self._table(runs)}
        if user.verdict in (DIVERGED, UNSTABLE) and best.lr < user.lr:
            how = (f"goes non-finite at step {user.nonfinite_step}" if user.nonfinite_step is not None
                   else f"is {user.verdict} (max grad norm {user.max_grad_norm:.3g})")
            return [Finding("lr_too_high", Severity.CRITICAL if user.verdict == DIVERGED else Severity.WARNING,
                            f"training at lr {user.lr:.3g} {how}; {best.lr:.3g} learns (loss down {best.drop:.0%})",
                            Where(), evidence,
                            Fix(config, f"Lower the learning rate to {best.lr:.3g}: {why}.{note}"))]
        generalizes = best.heldout_initial is None or (best.heldout_final is not None
                                                       and best.heldout_final < best.heldout_initial)
        barely_moves = user.verdict == FLAT and best.drop >= max(ctx.settings.lr_low_drop, ctx.settings.lr_low_ratio * user.drop)
        if best.lr > user.lr and barely_moves and generalizes:
            return [Finding("lr_too_low", Severity.WARNING,
                            f"the loss barely moves at lr {user.lr:.3g} (down {user.drop:.1%} in "
                            f"{len(user.losses)} steps); {best.lr:.3g} brings it down {best.drop:.0%}",
                            Where(), evidence,
                            Fix(config, f"Raise the learning rate to {best.lr:.3g}: {why}.{note}"))]
        return []

    def _clip(self, ctx: Any, user: TrainRun) -> tuple[list[Finding], dict[str, Any]]:
        clip = ctx.setup.grad_clip
        norms = [g for g in user.grad_norms if math.isfinite(g)]
        if clip is None or not norms or user.verdict == DIVERGED:
            return [], {}
        share = sum(g > clip for g in norms) / len(norms)
        factor = statistics.median(g / clip for g in norms)
        raw = {"max_norm": clip, "share_clipped": share, "median_clip_factor": factor,
               "median_grad_norm": statistics.median(norms)}
        if share < ctx.settings.clip_share or factor < ctx.settings.clip_factor:
            return [], raw
        suggestion, checked = self._verified_clip(ctx, user, statistics.median(norms))
        raw["candidates"] = checked
        config, note = fix_config(ctx.setup, "grad_clip", suggestion)
        verified = any(c["max_norm"] == suggestion and c["verdict"] == LEARNS for c in checked)
        advice = (f"Raise max_norm to {suggestion:g}, near the median gradient norm {raw['median_grad_norm']:.3g}"
                  + (f": a {ctx.settings.sweep_steps}-step run with it learns (loss down "
                     f"{next(c['drop'] for c in checked if c['max_norm'] == suggestion):.0%} vs {user.drop:.0%})"
                     if verified else " (no candidate learned in a short run: check the findings above)")
                  + f"; clip to guard against spikes, not every step.{note}")
        return [Finding("grad_clip_too_aggressive", Severity.WARNING,
                        f"clipping at max_norm={clip:g} scales {share:.0%} of steps down, by a median factor of {factor:,.3g}",
                        Where(), dict(raw, user_drop=user.drop), Fix(config, advice))], raw

    @staticmethod
    def _verified_clip(ctx: Any, user: TrainRun, median_norm: float) -> tuple[float, list[dict[str, Any]]]:
        """Try max_norm near the median norm, then 10x and 100x lower; keep the largest that learns."""
        import torch

        candidates = [nice_below(median_norm / 10 ** k) for k in range(3)]
        candidates = [c for c in candidates if c > ctx.setup.grad_clip]
        checked = []
        snapshot = ModelSnapshot(ctx.model)
        try:
            for candidate in candidates:
                torch.manual_seed(ctx.settings.seed)
                run = train(ctx, user.lr, ctx.settings.sweep_steps, candidate)
                snapshot.restore()
                checked.append({"max_norm": candidate, "verdict": run.verdict, "drop": run.drop})
                if run.verdict == LEARNS and run.drop > user.drop + 0.02:
                    return candidate, checked
        finally:
            snapshot.restore()
        return (candidates[0] if candidates else ctx.setup.grad_clip * 10), checked

    @staticmethod
    def _plateau(ctx: Any, runs: list[TrainRun], user: TrainRun) -> list[Finding]:
        stable = [r for r in runs if r.verdict not in (DIVERGED, UNSTABLE)]
        if not stable or not any((r.max_grad_norm or 0) > 0 for r in stable):
            return []
        baseline = random_guess_baseline(ctx, user.heldout_initial if user.heldout_initial is not None else user.initial_loss)
        with_heldout = [r for r in stable if r.heldout_initial is not None and r.heldout_final is not None]
        if with_heldout and baseline:
            best_heldout = min(r.heldout_final - r.heldout_initial for r in with_heldout)
            if best_heldout < -ctx.settings.plateau_heldout_drop * abs(with_heldout[0].heldout_initial):
                return []
            learned_train = max(r.drop for r in stable)
            detail = (f"held-out loss never falls below {baseline['value']:.4g} (random guess: "
                      f"{baseline['kind']}) at any of {len(stable)} stable rates, while the training loss "
                      f"falls by up to {learned_train:.0%}")
        elif all(r.verdict == FLAT for r in stable):
            detail = f"the loss moves by at most {max(abs(r.drop) for r in stable):.1%} at every rate while gradients are non-zero"
        else:
            return []
        return [Finding(
            "loss_plateau", Severity.CRITICAL if baseline else Severity.WARNING,
            f"the loss stays at its random-guess baseline: {detail}" if baseline else f"the loss is flat: {detail}",
            Where(),
            {"baseline": baseline, "initial_loss": user.initial_loss, "heldout_initial": user.heldout_initial,
             "heldout_final": {f"{r.lr:.3g}": r.heldout_final for r in with_heldout},
             "train_drop": {f"{r.lr:.3g}": r.drop for r in stable}},
            Fix(advice="The model can fit the training batches but learns nothing that carries to new ones: "
                       "check that labels stay aligned with their inputs (shuffled together, same order, same "
                       "join key), that targets are not constant, and the findings ranked above this one."))]
