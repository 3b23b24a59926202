"""Mixed precision: the first module, or op, that overflows or turns NaN only under autocast.

The same forward runs in float32 and under the user's autocast precision (or, with the
``amp_what_if`` setting, a precision the user is considering); module calls are compared in
order, and so are the loss and its components. Where they differ (and only then) the op-level
pass runs under autocast and names the op and the user's line that overflows.
"""

from __future__ import annotations

from typing import Any

from nandoctor.config import AMP, fix_config
from nandoctor.context import RunContext
from nandoctor.findings import CodeDoc, Finding, Fix, Severity, Stage, Where, is_finite
from nandoctor.measure.forward_pass import ForwardPass, forward_pass
from nandoctor.measure.ops import OpPass, locate_nonfinite_op
from nandoctor.probes.base import Fact, Fold, Phase, Probe, ProbeResult, Setting, no_rate_trained

LIMITS = {"fp16": 65504.0, "bf16": 3.3895e38}
_NO_HALF_KERNEL = ("not implemented for 'Half'", "not implemented for 'BFloat16'", "Low precision dtypes not supported")


def not_what_if(cause: Finding, symptom: Finding) -> bool:
    """The overflow is at the precision the user trains with, not a what-if (info) check."""
    return cause.severity != Severity.INFO


def _overflowing_component(full: ForwardPass, half: ForwardPass) -> str | None:
    return next(
        (
            name
            for name, value in half.components.items()
            if not is_finite(value) and is_finite(full.components.get(name))
        ),
        None,
    )


class AmpProbe(Probe):
    name = "amp"
    description = "forward under the user's autocast precision beside float32: overflow or NaN only in half precision"
    phase = Phase.FORWARD
    requires = (Fact.FORWARD_RUNS,)
    provides = (Fact.AUTOCAST_RUNS,)
    codes = (
        CodeDoc(
            "amp_overflow",
            Stage.PRECISION,
            "finite in float32, but overflows or turns NaN under the user's autocast precision",
            "float16 tops out at 65,504: large logits or attention scores become Inf, then NaN.",
            "Contrastive logits divided by a temperature of 0.07 under fp16 autocast.",
            "Use bf16, keep the named module in float32, scale the logits down, or use a GradScaler.",
        ),
    )
    folds = (
        Fold("amp_overflow", "forward_nonfinite"),
        Fold("amp_overflow", "exploding_gradients", not_what_if),  # both come from the same large values
        # every rate overflows under the same autocast: no rate trains, and the rate is not why
        Fold("amp_overflow", "lr_too_high", lambda c, s: not_what_if(c, s) and no_rate_trained(s)),
    )

    settings = (
        Setting("amp_what_if", "", "amp_overflow for a float32 spec: fp16 or bf16 checks that precision as a what-if"),
        Setting("amp_near", 0.25, "warn when float32 activations reach this share of float16's largest value"),
    )

    def run(self, ctx: RunContext) -> ProbeResult:
        import torch

        precision = ctx.setup.amp or ctx.settings.amp_what_if or None
        if precision is None:
            return ProbeResult(
                [],
                {"skipped": "the spec trains in float32 (set amp, or the amp_what_if setting)"},
                facts={Fact.AUTOCAST_RUNS: True},
            )
        dtype = torch.float16 if precision == "fp16" else torch.bfloat16
        device_type = ctx.setup.device.type
        findings, raw = (
            [],
            {
                "precision": precision,
                "what_if": ctx.setup.amp is None,
                "op_pass": f"not run: float32 and {precision} agree",
            },
        )

        def autocast():
            return torch.autocast(device_type=device_type, dtype=dtype)

        for index in range(len(ctx.batches)):
            torch.manual_seed(ctx.settings.seed)
            full = forward_pass(ctx, index)
            torch.manual_seed(ctx.settings.seed)
            half = forward_pass(ctx, index, autocast())
            if half.error:
                raw["error"] = half.error
                ops = locate_nonfinite_op(ctx, index, autocast(), precision)
                raw["op_pass"] = ops.to_raw()
                findings.append(self._half_error(precision, device_type, half.error, ops, index))
                break
            culprit = next(
                (
                    h
                    for f, h in zip(full.calls, half.calls)
                    if f.name == h.name and f.output_finite and not h.output_finite
                ),
                None,
            )
            loss_differs = is_finite(full.loss) and not is_finite(half.loss)
            component = _overflowing_component(full, half)
            if culprit is not None or loss_differs or component is not None:
                ops = locate_nonfinite_op(ctx, index, autocast(), precision, component=component)
                raw["op_pass"] = ops.to_raw()
                reference = next((f for f in full.calls if culprit is not None and f.name == culprit.name), None)
                findings.append(
                    self._overflow(ctx, precision, (culprit, reference), (full, half), component, ops, index)
                )
                break
            near = self._near_limit(full.calls, precision, ctx.settings.amp_near)
            if near is not None:
                raw["near_limit"] = near
        if not findings and raw.get("near_limit"):
            near = raw["near_limit"]
            findings.append(
                Finding(
                    "amp_overflow",
                    Severity.WARNING,
                    f"module {near['module']!r} reaches {near['absmax']:,.4g} in float32, "
                    f"within {1 / ctx.settings.amp_near:g}x of "
                    f"float16's limit 65,504",
                    Where(module=near["module"]),
                    dict(near, precision=precision),
                    Fix(
                        *fix_config(ctx.setup, AMP, "bf16")[:1],
                        advice=f"One larger batch overflows: scale down what {near['module']!r} computes, keep it "
                        "in float32, or use bf16.",
                    ),
                )
            )
        if findings and ctx.setup.amp is None:
            findings = [
                Finding(f.code, Severity.INFO, f"(what-if {precision}) {f.title}", f.where, f.evidence, f.fix)
                for f in findings
            ]
        # training at the user's precision (the LR sweep) cannot run where the forward raises under it
        runs = ctx.setup.amp is None or "error" not in raw
        return ProbeResult(findings, raw, facts={Fact.AUTOCAST_RUNS: runs})

    @staticmethod
    def _near_limit(calls: list, precision: str, near: float) -> dict[str, Any] | None:
        if precision != "fp16":
            return None
        for call in calls:
            if call.out_absmax is not None and call.output_finite and call.out_absmax >= near * LIMITS["fp16"]:
                return {
                    "module": call.name,
                    "module_type": call.kind,
                    "absmax": call.out_absmax,
                    "limit": LIMITS["fp16"],
                }
        return None

    @staticmethod
    def _half_error(precision: str, device_type: str, error: str, ops: OpPass, batch: int) -> Finding:
        """A crash only under autocast: the user's bug, unless the CPU simply lacks the half kernel."""
        site = ops.crash
        op, source = (site.op, site.source) if site is not None else (None, None)
        evidence = {
            "precision": precision,
            "message": error,
            "batch": batch,
            "op": op,
            "source": source,
            "device": device_type,
        }
        named = (op or "an op") + (f" at {source}" if source else "")
        if device_type == "cpu" and any(marker in error for marker in _NO_HALF_KERNEL):
            return Finding(
                "forward_error",
                Severity.INFO,
                f"{precision} not checked on the CPU: {named} has no {precision} kernel here (float32 runs fine)",
                Where(module=site.module if site else None, op=op, source=source),
                evidence,
                Fix(
                    advice=f"Not a bug in your float32 code: this CPU build of torch has no {precision} "
                    f"kernel for {op or 'this op'}. Run nandoctor on the device you train on to check "
                    f"{precision}; if it also lacks the kernel there, compute {named} in float32 "
                    "(torch.autocast(device_type, enabled=False) around it, .float() inputs)."
                ),
            )
        return Finding(
            "forward_error",
            Severity.CRITICAL,
            f"the forward raises under {precision} autocast at {named}: {error}",
            Where(module=site.module if site else None, op=op, source=source),
            evidence,
            Fix(
                advice=f"Make {named} accept half precision, or run it with "
                "torch.autocast(..., enabled=False) and float32 inputs."
            ),
        )

    @staticmethod
    def _overflow(
        ctx: RunContext,
        precision: str,
        calls: tuple,
        passes: tuple[ForwardPass, ForwardPass],
        component: str | None,
        ops: OpPass,
        batch: int,
    ) -> Finding:
        (culprit, reference), (full, half) = calls, passes
        limit, site = LIMITS[precision], ops.site
        config, note = fix_config(ctx.setup, AMP, "bf16") if precision == "fp16" else ({}, "")
        evidence = {
            "precision": precision,
            "dtype_limit": limit,
            "batch": batch,
            "float32_loss": full.loss,
            "autocast_loss": half.loss,
            "float32_components": full.components,
            "autocast_components": half.components,
            "op": site.op if site else None,
            "source": site.source if site else None,
            "op_dtype": site.dtype if site else None,
        }
        if precision == "fp16" and ctx.setup.amp == "fp16":  # the user trains so: bf16 is re-run as the fix
            evidence["rerun_fix"] = {"amp": "bf16"}
        at = (f"{site.op}" + (f" at {site.source}" if site.source else "")) if site is not None else None
        if culprit is not None:
            module = culprit.name
            evidence.update(
                {
                    "float32_absmax": reference.out_absmax,
                    "autocast_min": culprit.out_min,
                    "autocast_max": culprit.out_max,
                    "module_type": culprit.kind,
                }
            )
            title = (
                f"module {module!r} ({culprit.kind}) is finite in float32 (abs max {reference.out_absmax:,.4g}) "
                f"but overflows to Inf/NaN under {precision} autocast" + (f" at {at}" if at else "")
            )
            advice = (
                f"Module {module!r} reaches {reference.out_absmax:,.4g} in float32, beyond {precision}'s {limit:,.6g}: "
                if reference.out_absmax and reference.out_absmax > limit
                else f"Module {module!r} loses range or precision in {precision}: "
            )
        else:
            module = site.module if site is not None else None
            place = "the loss function" if module is None else f"module {module!r}"
            what = f"loss component {component!r}" if component else "the loss"
            title = (
                f"{at or 'an op'} in {place} overflows under {precision} autocast: {what} is "
                f"{half.components[component] if component else half.loss} there, "
                f"{full.components[component] if component else full.loss:,.4g} in float32"
            )
            advice = f"{at or 'An op'} in {place} overflows {precision}'s {limit:,.6g}: "
        advice += (
            "use bf16 (float32's range) instead of fp16, or compute it in float32 "
            "(torch.autocast(device_type, enabled=False) around it, .float() inputs), or scale it down "
            "(normalize embeddings before a similarity, a larger temperature, divide attention scores "
            "by sqrt(d)); a GradScaler guards the gradients." + note
        )
        return Finding(
            "amp_overflow",
            Severity.CRITICAL,
            title,
            Where(
                module=module, component=component, op=site.op if site else None, source=site.source if site else None
            ),
            evidence,
            Fix(config, advice),
        )
