"""Training steps: the user's own configuration trained a few dozen steps; a NaN at step k is traced.

A failure that appears only after some steps is still a failure of the user's code. The probe
trains the cached batches at the user's rate, optimizer, clipping and precision, reading the
loss and gradient norm once a step. At the first NaN/Inf (step k) it restores the weights,
re-runs steps 0..k-1, and traces step k: the forward down to the op and the user's line that
made the NaN/Inf (the op-level pass), or the backward down to the autograd node. An op that is
unsafe at a point its input reached (log or a division at 0, sqrt at 0) is the user's bug and
the rate only its trigger; an overflow that only a large rate produces folds under
``lr_too_high`` when the sweep found one.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from nandoctor.context import RunContext
from nandoctor.findings import Finding, Fix, Severity, Where
from nandoctor.measure.grad_origin import find_gradient_origin
from nandoctor.measure.ops import locate_nonfinite_op
from nandoctor.measure.trace import trace_batch
from nandoctor.probes.backward import OP_ADVICE
from nandoctor.probes.base import Cost, Fact, Fold, Phase, Probe, ProbeResult, Setting, nothing_to_train
from nandoctor.probes.forward import first_nonfinite_call
from nandoctor.state import run_snapshot
from nandoctor.step import StepLog, TrainingStep, autocast, fp16_scaler, fresh_optimizer, read_interval, run_steps
from nandoctor.sweep.grid import UserRun
from nandoctor.sweep.training import train

# Ops that turn finite inputs into NaN/Inf at a point of their domain (not by overflow).
UNSAFE_AT_A_POINT = {
    "log": "log of a value that reached 0 (a softmax or sigmoid that saturated): use log_softmax / "
    "F.cross_entropy / F.binary_cross_entropy_with_logits, or log(x.clamp_min(eps))",
    "log2": "log2 of 0: clamp its input with eps",
    "log10": "log10 of 0: clamp its input with eps",
    "log1p": "log1p of -1: keep its input above -1",
    "div": "a division by a value that reached 0: add eps to the denominator",
    "reciprocal": "1/x at 0: add eps",
    "sqrt": "sqrt of a negative value: clamp at 0 (and add eps for its gradient)",
    "rsqrt": "rsqrt at 0: add eps inside",
    "pow": "a power of 0 or of a negative value: add eps or clamp",
    "acos": "acos outside [-1, 1]: clamp its input",
    "asin": "asin outside [-1, 1]: clamp its input",
    "atanh": "atanh at ±1: clamp its input",
    "xlogy": "x * log(y) at y = 0: clamp y",
}


def _op_base(op: str | None) -> str:
    """``aten::log.default`` or ``LogBackward0`` -> ``log``."""
    name = (op or "").split("::")[-1].split(".")[0]
    return name[: -len("Backward0")].lower() if name.endswith("Backward0") else name.lower().rstrip("_")


def train_steps(ctx: RunContext, steps: int, budget_s: float) -> dict[str, Any]:
    """Up to ``steps`` steps from the current weights (the shared training step); stops at the first
    NaN/Inf loss or gradient norm (past GradScaler's calibration), a step that raises, or the budget."""
    setup, settings = ctx.setup, ctx.settings  # the modules keep the modes they arrived in, as the user trains them
    log = StepLog()
    with fresh_optimizer(setup, setup.lr) as optimizer:
        trainer = TrainingStep(
            setup,
            optimizer,
            setup.grad_clip,
            scaler=fp16_scaler(setup),
            read_every=read_interval(setup.device, settings.sweep_read_every),
        )
        run_steps(
            trainer,
            log,
            steps,
            lambda step: ctx.batches[step % len(ctx.batches)],
            lambda values: log.add_all(values, trainer.scaled, settings.amp_skip_limit),
            budget_s=budget_s,
        )
    return {
        "losses": log.losses,
        "grad_norms": log.grad_norms,
        "nonfinite_step": log.nonfinite_step,
        "stopped": log.stopped,
    }


def locate_op(ctx: RunContext, batch_index: int) -> dict[str, Any] | None:
    """The op that made the NaN/Inf in this step's forward or loss: op, module, source, made."""
    site = locate_nonfinite_op(ctx, batch_index, autocast(ctx.setup), ctx.setup.amp).site
    return None if site is None else {"op": site.op, "module": site.module, "source": site.source, "made": site.made}


def _overflow(cause: Finding, symptom: Finding) -> bool:
    """The symptom is this probe's, made by an overflow the rate produced (not an op unsafe at a point)."""
    return symptom.evidence.get("after_steps") is not None and symptom.evidence.get("kind") == "overflow"


class StepsProbe(Probe):
    name = "steps"
    description = "trains the user's own configuration some steps; a NaN/Inf at step k is traced to its op and line"
    phase = Phase.TRAINING
    cost = Cost.TRAINS
    requires = (Fact.FORWARD_OK, Fact.BACKWARD_OK)
    settings = (Setting("guard_budget_s", 60.0, "diagnose --steps: those steps stop after this many seconds"),)
    folds = (Fold("lr_too_high", "forward_nonfinite", _overflow), Fold("lr_too_high", "backward_nonfinite", _overflow))

    def run(self, ctx: RunContext) -> ProbeResult:
        import torch

        idle = nothing_to_train(ctx)
        if idle is not None:
            return idle
        snapshot = run_snapshot(ctx)  # the run's one copy of the weights
        plan = ctx.shared.get("sweep_plan")
        wanted = plan.guard_steps if plan is not None else ctx.settings.guard_steps
        shared = ctx.shared.get("sweep_user")
        try:
            if shared is not None and self._sweep_answers(shared.run, wanted, plan):
                return self._from_sweep(ctx, shared)
            torch.manual_seed(ctx.settings.seed)
            run = train_steps(ctx, wanted, ctx.settings.guard_budget_s)
            raw = {
                "steps_run": len(run["losses"]),
                "nonfinite_step": run["nonfinite_step"],
                "stopped": run["stopped"],
                "losses": run["losses"],
                "lr": ctx.setup.lr,
            }
            step = run["nonfinite_step"]
            if step is None:
                return ProbeResult([], raw)
            snapshot.restore()
            torch.manual_seed(ctx.settings.seed)
            train_steps(ctx, step, math.inf)  # the same steps again: the weights just before step k
            index = step % len(ctx.batches)
            finding, raw["trace"] = self._trace(ctx, step, run, ctx.batches[index], index)
            return ProbeResult([finding] if finding else [], raw)
        finally:
            snapshot.restore()

    @staticmethod
    def _sweep_answers(user: Any, wanted: int, plan: Any) -> bool:
        """The sweep's run of the user's rate answers the question: it went non-finite, or trained
        as many steps as wanted, or a large model scaled the plan down (then the sweep's steps are
        all it can afford; a small model trains on here, to trace a NaN that comes later)."""
        return (
            user.nonfinite_step is not None
            or len(user.losses) >= wanted
            or (plan is not None and plan.scaled and wanted == plan.steps)
        )

    def _from_sweep(self, ctx: RunContext, shared: UserRun) -> ProbeResult:
        """The sweep already trained the user's configuration: read its run, and trace its NaN/Inf step."""
        import torch

        user, stream, checkpoints = shared.run, shared.stream, shared.checkpoints
        raw = {
            "steps_run": len(user.losses),
            "nonfinite_step": user.nonfinite_step,
            "stopped": user.cut,
            "losses": user.losses,
            "lr": ctx.setup.lr,
            "read_from": "the LR sweep's run of the user's rate",
        }
        step = user.nonfinite_step
        if step is None:
            return ProbeResult([], raw)
        if step > 0:  # the same steps again, the held-out scoring included: the weights just before step k
            torch.manual_seed(ctx.settings.seed)
            start = {"loss": user.heldout_initial, "spread": user.spread_initial}
            train(ctx, stream, user.lr, [c for c in checkpoints if c < step] + [step], user.clip, start)
        run = {"losses": user.losses, "grad_norms": user.grad_norms}
        finding, raw["trace"] = self._trace(ctx, step, run, stream.train(step), stream.data_index(step))
        return ProbeResult([finding] if finding else [], raw)

    def _trace(
        self, ctx: RunContext, step: int, run: dict[str, Any], batch: Any, batch_index: int
    ) -> tuple[Finding | None, dict[str, Any]]:
        """Trace step ``step`` (on ``batch``, index ``batch_index`` in ``data``) from the current weights."""
        fresh = replace(ctx, shared={}, batches=[batch])  # its own traced pass, not the step-0 recording
        trace = trace_batch(fresh, 0)
        lr = ctx.setup.lr
        evidence: dict[str, Any] = {
            "after_steps": step,
            "lr": lr,
            "batch": batch_index,
            "loss_before": run["losses"][-2] if len(run["losses"]) > 1 else None,
            "max_grad_norm": max((g for g in run["grad_norms"] if math.isfinite(g)), default=None),
        }
        if trace.crash is None and not trace.forward_finite:
            site = locate_op(fresh, 0) or {}
            found = first_nonfinite_call(trace)
            module = site.get("module") if site else (found[1] if found else None)
            code, op, source = "forward_nonfinite", site.get("op"), site.get("source")
            made = site.get("made") or "NaN/Inf"
            what = (
                f"{op or 'an op'}"
                + (f" at {source}" if source else "")
                + (f" in module {module!r}" if module else " in the loss function" if site else "")
            )
            title = f"after {step} training steps at lr {lr:.3g}, {what} turns finite values into {made}"
        elif trace.crash is None and not trace.backward_finite:
            origin = find_gradient_origin(fresh, 0) or {}
            code, op, source = "backward_nonfinite", origin.get("op"), origin.get("source")
            module = origin.get("module")
            place = "the loss function" if origin.get("loss_side") else f"module {module!r}"
            title = (
                f"after {step} training steps at lr {lr:.3g}, gradients turn NaN/Inf in {place}"
                + (f" at {op}" if op else "")
                + " while the forward is finite"
            )
        else:
            return None, {"batch": batch_index, "note": "the re-run step did not fail again"}
        unsafe = UNSAFE_AT_A_POINT.get(_op_base(op))
        evidence["kind"] = "unsafe op" if unsafe else ("overflow" if op else "unknown")
        evidence["op"] = op
        if unsafe:
            advice = (
                f"{unsafe}. The op is unsafe at a value training reaches: at lr {lr:.3g} it got there in "
                f"{step} steps, and a lower rate can only delay that; the fix is in the code."
            )
        elif op:
            advice = (
                f"{OP_ADVICE.get(op, f'{op} overflowed after the weights grew')}: the rate drove the values "
                "there; see the learning-rate finding, and bound them (normalisation, clamping)."
            )
        else:
            advice = (
                f"It appears after {step} steps at lr {lr:.3g}: look for log of values that reach 0 (use "
                "log_softmax / F.cross_entropy / binary_cross_entropy_with_logits), divisions by a norm or count "
                "that reaches 0 (add eps), and sqrt/pow at 0 on that path."
            )
        finding = Finding(
            code,
            Severity.CRITICAL,
            title,
            Where(module=module, op=op, source=source, batch=batch_index),
            evidence,
            Fix(advice=advice),
        )
        return finding, {"batch": batch_index, "op": op, "module": module, "source": source, "kind": evidence["kind"]}
