"""``nandoctor replay``: rebuild the run from its spec, load a capture, re-run it to the failing step.

The capture holds the state at the start of the failing window and every batch since. The
replay loads that state into the model the spec builds, re-runs the window's steps with the
recorded learning rates (the spec's loss, clipping and precision), checks that the failing
step fails again, then runs the probes on that step's batch and state, and reads the ring
buffer for what changed before it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nandoctor.batches import to_device
from nandoctor.config import LR, fix_config
from nandoctor.distributed import plain_state
from nandoctor.errors import UsageError, first_line
from nandoctor.findings import Finding, Fix, Severity, Where
from nandoctor.guard.capture import MicroBatches, check_capture, load_capture, set_rng_states, unsharded
from nandoctor.guard.history import changes, lr_jump
from nandoctor.spec import Setup, load, parse_overrides
from nandoctor.state import preserved_rng
from nandoctor.step import TrainingStep, fp16_scaler, make_optimizer

if TYPE_CHECKING:
    from nandoctor.results import Report


def chosen_spec(
    payload: dict[str, Any], spec: str | None, overrides: list[str], trust_spec: bool, progress: Callable[[str], None]
) -> tuple[str, dict[str, Any]]:
    """The spec replay may run, and its arguments. A capture is data from someone else: its recorded
    spec runs only when the user trusts it (``--trust-spec``), after it is shown, and only as a file
    (never an installed module's function such as ``os:system``); ``--spec`` runs the user's own
    choice, with the ``--set`` arguments alone."""
    recorded, recorded_args = payload.get("spec"), dict(payload.get("spec_args") or {})
    shown = ", ".join(f"{k}={v!r}" for k, v in recorded_args.items())
    if spec:
        if recorded_args:
            progress(
                f"nandoctor: the capture recorded the arguments {shown}; they are not used with --spec "
                "(pass them with --set to use them)"
            )
        return spec, parse_overrides(overrides)
    if not recorded:
        raise UsageError(
            "the capture records no spec: pass --spec path/to/file.py:build (the build function "
            "of the run that wrote it)"
        )
    progress(f"nandoctor: the capture names the spec {recorded}" + (f" with {shown}" if shown else ""))
    target = located(recorded, payload.get("spec_folder"))
    if not trust_spec:
        raise UsageError(
            f"replay runs a spec only when you name it: pass --spec {target or recorded} after checking "
            "that it is yours, or --trust-spec to run the one the capture records"
        )
    if target is None:
        raise UsageError(
            f"the recorded spec {recorded} is not a file here (an installed module's function, or a "
            "file moved since): pass --spec path/to/file.py:build"
        )
    return target, {**recorded_args, **parse_overrides(overrides)}


def located(recorded: str, folder: str | None) -> str | None:
    """``recorded`` as a file spec found from here or from the folder it was recorded in; else None."""
    path, _, function = recorded.rpartition(":")
    if not path or not path.endswith(".py"):
        return None
    for candidate in (Path(path), Path(folder or ".") / path):
        if candidate.is_file():
            return f"{candidate}:{function}"
    return None


def load_replay_setup(payload: dict[str, Any], spec: str, kwargs: dict[str, Any], seed: int) -> Setup:
    """The spec's setup with the captured weights loaded."""
    setup = load(spec, kwargs, seed, progress=lambda message: None)
    try:
        setup.model.load_state_dict(plain_state(payload["model"]))
    except (RuntimeError, KeyError, TypeError) as exc:
        keys = [line.strip().rstrip(".") for line in str(exc).splitlines()[1:] if line.strip()]
        raise UsageError(
            f"the model {spec} builds does not match the capture's ({payload.get('model_class')}): "
            f"{'; '.join(keys)[:400] or first_line(exc)[:300]}"
        ) from exc
    return setup


def _optimizer(setup: Setup, payload: dict[str, Any], notes: list[str]):
    """The user's optimizer at the window's first rate, with the captured state when it loads."""
    lrs = payload.get("lrs") or [[]]
    optimizer = make_optimizer(setup, lrs[0][0] if lrs[0] else setup.lr)
    captured = payload.get("optimizer")
    groups = captured.get("param_groups") if isinstance(captured, dict) else None
    lacking = sorted(set(optimizer.defaults) - set(groups[0])) if groups and isinstance(groups[0], dict) else []
    if lacking:  # another optimizer's state (SGD's into Adam) would load, then fail at the first step
        notes.append(
            f"the capture holds another optimizer's state (its groups lack {', '.join(lacking)}): "
            f"replayed with a fresh {type(optimizer).__name__}, as the spec builds it"
        )
    elif captured is not None:
        try:
            optimizer.load_state_dict(captured)
        except (ValueError, KeyError, RuntimeError) as exc:
            notes.append(f"the optimizer state was not restored ({first_line(exc)[:160]}): replayed with a fresh one")
    else:
        notes.append("the capture holds no optimizer state: replayed with a fresh optimizer")
    return optimizer


def rerun_window(setup: Setup, payload: dict[str, Any], notes: list[str]) -> list[dict[str, Any]]:
    """Re-run the captured steps up to the failing one (not its update); each step's loss and gradient
    norm before clipping, through the shared training step. A step that raises ends the window: its
    entry says so (``raised``) and the replay is then not reproduced."""
    batches = [
        MicroBatches(to_device(m, setup.device) for m in b)
        if isinstance(b, MicroBatches)
        else to_device(b, setup.device)
        for b in payload["batches"]
    ]
    optimizer = _optimizer(setup, payload, notes)
    trainer = TrainingStep(setup, optimizer, setup.grad_clip, scaler=fp16_scaler(setup, payload.get("scaler")))
    if payload.get("rng"):
        set_rng_states(payload["rng"])
    setup.model.train()
    steps = []
    first = payload.get("window_start") or 0
    for offset, (batch, lrs) in enumerate(zip(batches, payload.get("lrs") or [[]] * len(batches))):
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr
        last = offset == len(batches) - 1  # the failing step: measured, never applied
        micro = list(batch) if isinstance(batch, MicroBatches) else [batch]
        failure = (trainer.measure if last else trainer.run)(first + offset, micro)
        if failure is not None:
            notes.append(f"the replay stopped: {failure.text}")
            steps.append({"step": first + offset, "loss": None, "grad_norm": None, "raised": failure.text})
            break
        ((loss, norm),) = trainer.read()
        steps.append({"step": first + offset, "loss": loss, "grad_norm": norm})
    setup.model.zero_grad(set_to_none=True)
    return steps


def reproduced(payload: dict[str, Any], step: dict[str, Any]) -> bool:
    """The failing step fails again the same way (for a spike: the same loss within 1%)."""
    reason = payload.get("reason")
    if step.get("raised"):
        return False
    if reason == "nonfinite_loss":
        return not math.isfinite(step["loss"])
    if reason == "nonfinite_grad":
        return not math.isfinite(step["grad_norm"])
    captured = next((r["loss"] for r in reversed(payload.get("ring") or []) if r["step"] == payload["step"]), None)
    return captured is not None and math.isfinite(step["loss"]) and abs(step["loss"] - captured) <= 0.01 * abs(captured)


def where_they_part(payload: dict[str, Any], steps: list[dict[str, Any]]) -> str | None:
    """The first replayed step before the failing one that fails already, or that differs from the
    recorded run (loss off by more than 1%): where the replay stopped being the run it replays."""
    recorded = {r["step"]: r for r in payload.get("ring") or []}
    for step in steps[:-1]:
        if not (math.isfinite(step["loss"]) and math.isfinite(step["grad_norm"])):
            return (
                f"the replay fails at step {step['step']} already, before the recorded failure at step "
                f"{payload['step']}"
            )
        loss = (recorded.get(step["step"]) or {}).get("loss")
        if loss is not None and math.isfinite(loss) and abs(step["loss"] - loss) > 0.01 * max(abs(loss), 1e-12):
            return (
                f"the replayed steps part from the recorded ones at step {step['step']}: loss {step['loss']:.4g} "
                f"replayed, {loss:.4g} recorded"
            )
    return None


def _lr_finding(setup: Setup, payload: dict[str, Any]) -> list[Finding]:
    """A learning rate that jumped before the failure is its trigger: go back to the rate before it."""
    jump = lr_jump(payload.get("ring") or [])
    if jump is None or jump["to_step"] > payload["step"]:
        return []
    config, note = fix_config(setup, LR, jump["from"])
    return [
        Finding(
            "lr_too_high",
            Severity.CRITICAL,
            f"{jump['text']}, {payload['step'] - jump['to_step']} step(s) before the failure at step {payload['step']}",
            Where(),
            {k: jump[k] for k in ("from", "to", "from_step", "to_step", "ratio")},
            Fix(
                config,
                f"Keep the learning rate at {jump['from']:.3g} or below: check the schedule "
                f"(warmup end, restarts, a scale factor applied twice) that set {jump['to']:.3g}.{note}",
            ),
        )
    ]


def replay(
    path: str,
    spec: str | None,
    overrides: list[str],
    settings: Any,
    progress: Callable[[str], None],
    debug: bool = False,
    trust_spec: bool = False,
) -> "Report":
    """Load, re-run, check and diagnose a capture; the report of ``diagnose`` plus a ``replay`` section."""
    from nandoctor.probes import training_probes
    from nandoctor.runner import build_report, on_device, run_probes, select_probes

    payload = load_capture(path)
    spec, kwargs = chosen_spec(payload, spec, overrides, trust_spec, progress)
    check_capture(path, payload)
    payload = unsharded(path, payload)  # an FSDP2 run's per-rank shards, joined
    setup = load_replay_setup(payload, spec, kwargs, settings.seed)
    notes: list[str] = []
    progress(f"nandoctor: replaying steps {payload.get('window_start')}..{payload['step']} of {path}")
    with preserved_rng(), on_device(setup.model, setup.device):
        steps = rerun_window(setup, payload, notes)
    again = reproduced(payload, steps[-1])
    parted = where_they_part(payload, steps)
    if parted:
        notes.append(parted)
    if not again:
        notes.append(
            "the failing step did not fail again in the replay: the failure depends on something the "
            "capture does not hold (data-loader workers, non-deterministic kernels, a changed spec, "
            "micro-batches of an accumulated step that were not captured)"
        )
    failing = payload["batches"][-1]  # every micro-batch of an accumulated step: the bad sample is in one
    setup.data = list(failing) if isinstance(failing, MicroBatches) else [failing]
    # the probes that train from the start are left out: the replay is about this one step
    parts = run_probes(
        setup,
        settings.replace(batches=len(setup.data)),
        select_probes(None, training_probes()),
        progress=progress,
        debug=debug,
    )
    parts["findings"] = _rank(parts["findings"] + _lr_finding(setup, payload))
    if not again:  # what the probes find on that step may be real, but it is not the recorded failure
        parts["coverage"]["probes_not_run"]["replay"] = f"the failure at step {payload['step']} did not happen again"
    report = build_report(
        spec,
        parts,
        replay={
            "capture": str(path),
            "reason": payload.get("reason"),
            "step": payload["step"],
            "window_start": payload.get("window_start"),
            "reproduced": again,
            "steps": steps,
            "changes": changes(payload.get("ring") or []),
            "notes": notes,
        },
    )
    return report if again else dataclasses.replace(report, verdict="incomplete")


def _rank(findings: list[Finding]) -> list[Finding]:
    from nandoctor.ranking import rank

    return rank(findings)
