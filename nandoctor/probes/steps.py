"""Training steps: the user's own configuration trained a few dozen steps; a NaN at step k is traced.

A failure that appears only after some steps is still a failure of the user's code. The probe
trains the cached batches at the user's rate, optimizer, clipping and precision, reading the
loss and gradient norm once a step. At the first NaN/Inf (step k) it restores the weights,
re-runs steps 0..k-1, and traces step k: the forward down to the op and the user's line that
made the NaN/Inf (the op-level pass), or the backward down to the autograd node, the user's line
and the nearest parameter; both re-runs draw the step's own dropout masks. Which of the op and the
rate is the cause is decided by two controls, the same steps again: at a lower rate, and with the
failing op in its numerically stable form (``measure/stable.py``). An op the stable form cures is
the user's bug, the rate only its trigger (``lr_too_high`` folds under it); a NaN that only a lower
rate avoids is an overflow the rate produced (it folds under ``lr_too_high``).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from nandoctor.config import LR, fix_config
from nandoctor.context import RunContext
from nandoctor.findings import Finding, Fix, Severity, Where
from nandoctor.measure.grad_origin import gradient_origin
from nandoctor.measure.ops import OpPass, locate_nonfinite_op
from nandoctor.measure.stable import FORMS, stable_forms
from nandoctor.measure.stats import rng_state
from nandoctor.measure.trace import trace_batch
from nandoctor.probes.backward import OP_ADVICE, _parameter_near
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


def train_steps(ctx: RunContext, steps: int, budget_s: float, lr: float | None = None) -> dict[str, Any]:
    """Up to ``steps`` steps from the current weights (the shared training step) at ``lr`` (the user's);
    stops at the first NaN/Inf loss or gradient norm (past GradScaler's calibration), a step that
    raises, or the budget."""
    setup, settings = ctx.setup, ctx.settings  # the modules keep the modes they arrived in, as the user trains them
    log = StepLog()
    with fresh_optimizer(setup, setup.lr if lr is None else lr) as optimizer:
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


def locate_op(ctx: RunContext, batch_index: int, rng: Any = None) -> OpPass:
    """The op pass over this step's forward and loss (from the step's generator states ``rng``)."""
    return locate_nonfinite_op(ctx, batch_index, autocast(ctx.setup), ctx.setup.amp, rng=rng)


def _overflow(cause: Finding, symptom: Finding) -> bool:
    """The symptom is this probe's, made by an overflow the rate produced (not an op unsafe at a point)."""
    return symptom.evidence.get("after_steps") is not None and symptom.evidence.get("kind") == "overflow"


def _trigger(cause: Finding, symptom: Finding) -> bool:
    """The cause is this probe's op, unsafe at a point the rate drove its input to: the rate is its trigger."""
    return cause.evidence.get("after_steps") is not None and cause.evidence.get("kind") == "unsafe op"


def _broke(run: dict[str, Any]) -> str:
    """How a control run that did not stay finite ended, in words."""
    if run["nonfinite_step"] is not None:
        return f"it breaks too (step {run['nonfinite_step']})"
    if run["blowup_step"] is not None:
        return f"the loss blows up (step {run['blowup_step']})"
    return f"it stops: {run['stopped']}"


def _ran(log: Any) -> dict[str, Any]:
    """A control run in plain data: steps run, the NaN/Inf step (None: none), the last finite loss."""
    finite = [loss for loss in log.losses if math.isfinite(loss)]
    blown = getattr(log, "blowup_step", None)
    return {
        "steps_run": len(log.losses),
        "nonfinite_step": log.nonfinite_step,
        "blowup_step": blown,
        "final_loss": finite[-1] if finite else None,
        "stopped": log.stopped,
        "ok": log.nonfinite_step is None and blown is None and log.failure is None,
    }


class StepsProbe(Probe):
    name = "steps"
    description = "trains the user's own configuration some steps; a NaN/Inf at step k is traced to its op and line"
    phase = Phase.TRAINING
    cost = Cost.TRAINS
    requires = (Fact.FORWARD_OK, Fact.BACKWARD_OK)
    settings = (Setting("guard_budget_s", 60.0, "diagnose --steps: those steps stop after this many seconds"),)
    folds = (
        Fold("lr_too_high", "forward_nonfinite", _overflow),
        Fold("lr_too_high", "backward_nonfinite", _overflow),
        Fold("forward_nonfinite", "lr_too_high", _trigger),
        Fold("backward_nonfinite", "lr_too_high", _trigger),
    )

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
                return self._from_sweep(ctx, shared, wanted)
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

            def rerun(lr: float) -> dict[str, Any]:
                snapshot.restore()
                torch.manual_seed(ctx.settings.seed)
                log = train_steps(ctx, max(wanted, step + 1), ctx.settings.guard_budget_s, lr)
                return _ran(
                    StepLog(
                        losses=log["losses"],
                        grad_norms=log["grad_norms"],
                        nonfinite_step=log["nonfinite_step"],
                        stopped=log["stopped"],
                    )
                )

            if finding is not None:
                finding, raw["controls"] = self._controls(ctx, finding, max(wanted, step + 1), rerun)
                raw["trace"]["kind"] = finding.evidence["kind"]
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

    def _from_sweep(self, ctx: RunContext, shared: UserRun, wanted: int) -> ProbeResult:
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
        start = {"loss": user.heldout_initial, "spread": user.spread_initial}
        torch.manual_seed(ctx.settings.seed)  # as the sweep's run began: step k draws its own dropout masks
        if step > 0:  # the same steps again, the held-out scoring included: the weights just before step k
            train(ctx, stream, user.lr, [c for c in checkpoints if c < step] + [step], user.clip, start)
        run = {"losses": user.losses, "grad_norms": user.grad_norms}
        micro = step * stream.group  # under torchrun a step accumulates several batches: its first is traced
        finding, raw["trace"] = self._trace(ctx, step, run, stream.train(micro), stream.data_index(micro))
        steps = max(wanted, len(user.losses), step + 1)

        def rerun(lr: float) -> dict[str, Any]:
            run_snapshot(ctx).restore()
            torch.manual_seed(ctx.settings.seed)
            return _ran(train(ctx, stream, lr, [steps], user.clip, start))

        if finding is not None:
            finding, raw["controls"] = self._controls(ctx, finding, steps, rerun)
            raw["trace"]["kind"] = finding.evidence["kind"]
        return ProbeResult([finding] if finding else [], raw)

    def _trace(
        self, ctx: RunContext, step: int, run: dict[str, Any], batch: Any, batch_index: int
    ) -> tuple[Finding | None, dict[str, Any]]:
        """Trace step ``step`` (on ``batch``, index ``batch_index`` in ``data``) from the current weights and
        generator states: the traced pass, then the op pass or the gradient search from the same states."""
        fresh = replace(ctx, shared={}, batches=[batch])  # its own traced pass, not the step-0 recording
        rng = rng_state(batch)
        trace = trace_batch(fresh, 0)
        lr = ctx.setup.lr
        evidence: dict[str, Any] = {
            "after_steps": step,
            "lr": lr,
            "batch": batch_index,
            "loss_before": run["losses"][-2] if len(run["losses"]) > 1 else None,
            "max_grad_norm": max((g for g in run["grad_norms"] if math.isfinite(g)), default=None),
        }
        parameter = None
        if trace.crash is None and not trace.forward_finite:
            ops = locate_op(fresh, 0, rng)
            site = ops.site
            found = first_nonfinite_call(trace)
            module = site.module if site else (found[1] if found else None)
            code, op, source = "forward_nonfinite", site.op if site else None, site.source if site else None
            unknown = None if site else "; ".join(ops.notes) or ops.error or "the op pass found no op"
            what = (
                f"{op or 'an op'}"
                + (f" at {source}" if source else "")
                + (f" in module {module!r}" if module else " in the loss function" if site else "")
            )
            title = (
                f"after {step} training steps at lr {lr:.3g}, {what} turns finite values into "
                f"{(site.made if site else None) or 'NaN/Inf'}"
            )
        elif trace.crash is None and not trace.backward_finite:
            origin, unknown = gradient_origin(fresh, 0, rng=rng, squares=True)
            origin = origin or {}
            code, op, source = "backward_nonfinite", origin.get("op"), origin.get("source")
            module = origin.get("module")
            if module is None and not origin.get("loss_side") and trace.first_nonfinite_grad_call is not None:
                module = trace.calls[trace.first_nonfinite_grad_call].name
            parameter = _parameter_near(trace, module)
            place = (
                "the loss function"
                if origin.get("loss_side")
                else f"module {module!r}"
                if module
                else "a place the search could not name"
            )
            grows = (
                "grow past what their squared norm can hold (the norm is Inf)"
                if origin.get("norm_overflow")
                else "turn NaN/Inf"
            )
            title = (
                f"after {step} training steps at lr {lr:.3g}, gradients {grows} in {place}"
                + (f" at {op}" if op else "")
                + (f" (made at {source})" if source else "")
                + " while the forward is finite"
            )
            evidence["norm_overflow"] = bool(origin.get("norm_overflow"))
        else:
            return None, {"batch": batch_index, "note": "the re-run step did not fail again"}
        if unknown:
            title += f" (no op named: {unknown})"
            evidence["op_unknown"] = unknown
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
            Where(module=module, parameter=parameter, op=op, source=source, batch=batch_index),
            evidence,
            Fix(advice=advice),
        )
        return finding, {
            "batch": batch_index,
            "op": op,
            "module": module,
            "source": source,
            "parameter": parameter,
            "kind": evidence["kind"],
        }

    def _controls(self, ctx: RunContext, finding: Finding, steps: int, rerun: Any) -> tuple[Finding, dict[str, Any]]:
        """The same ``steps`` again at a lower rate, and at the user's rate with the failing op in its stable
        form: which one keeps the run finite decides the cause (the op) and the trigger (the rate)."""
        step, lr, op, source = finding.evidence["after_steps"], ctx.setup.lr, finding.where.op, finding.where.source
        recommended = ctx.shared.get("sweep_recommended_lr")
        lower = recommended if recommended is not None and recommended < lr else float(f"{lr / 10:.3g}")
        controls: dict[str, Any] = {
            "steps": steps,
            "lower_rate": dict(rerun(lower), lr=lower, from_sweep=lower == recommended),
        }
        if source is None:
            controls["stable_form"] = {"ran": False, "why": "the op's line is not known, so no op can be rewritten"}
        else:
            with stable_forms(source) as rewrites:
                outcome = rerun(lr)
            controls["stable_form"] = dict(outcome, ran=bool(rewrites.counts), forms=rewrites.forms, at=source)
            if not rewrites.counts:
                controls["stable_form"]["why"] = (
                    f"no numerically stable form is known for {op} at {source} "
                    "(known: log of softmax/sigmoid, BCE on sigmoid, sqrt, exp)"
                )
        stable, slower = controls["stable_form"], controls["lower_rate"]
        evidence = dict(finding.evidence, controls=controls)
        what = _op_base(op) or "the op"
        before = f"at lr {lr:.3g} {what} breaks after {step} steps"
        if stable.get("ran") and stable["ok"]:
            evidence["kind"] = "unsafe op"
            evidence["trigger"] = f"{before}; at {lower:.3g} " + (
                f"it does not in {steps} steps, but the {what} stays fragile" if slower["ok"] else _broke(slower)
            )
            forms = "; ".join(FORMS[f] for f in stable["forms"])
            config, note = fix_config(ctx.setup, LR, lower) if slower["ok"] else ({}, "")
            advice = (
                f"Use the stable form at {source}: {forms}. With it the same {steps} steps at lr {lr:.3g} stay "
                f"finite (without it the NaN/Inf came at step {step}). The rate is the trigger: "
                + (
                    f"at lr {lower:.3g} the run stays finite for {steps} steps, but a lower rate only keeps "
                    f"the values away from the point where the {what} breaks.{note}"
                    if slower["ok"]
                    else f"at lr {lower:.3g} {_broke(slower)}."
                )
                + " Fix the op; lower the rate as well if the learning-rate finding says so."
            )
            verified = {"steps": steps, "before": step, "after": stable["nonfinite_step"], "ok": True}
            fix = Fix(config, advice, verified)
        elif slower["ok"] and (stable.get("ran") or evidence["kind"] != "unsafe op"):
            evidence["kind"] = "overflow"
            evidence["trigger"] = f"{before}; at {lower:.3g} it does not in {steps} steps" + (
                f", while the stable form ({', '.join(stable['forms'])}) still breaks" if stable.get("ran") else ""
            )
            config, note = fix_config(ctx.setup, LR, lower)
            fix = Fix(
                config,
                f"{finding.fix.advice} At lr {lower:.3g} the same {steps} steps stay finite.{note}",
                {"steps": steps, "before": step, "after": None, "ok": True},
            )
        else:  # no control decides: the op's name does, and the evidence says so
            evidence["decided_by"] = (
                f"the op's name: {stable.get('why') or 'the stable form did not keep the run finite'}"
                f"; at lr {lower:.3g} " + (f"the same {steps} steps stay finite" if slower["ok"] else _broke(slower))
            )
            if slower["ok"]:
                evidence["trigger"] = f"{before}; at {lower:.3g} it does not in {steps} steps"
            fix = finding.fix
        return replace(finding, evidence=evidence, fix=fix), controls
