"""Mixed precision: the first module that overflows or turns NaN only under autocast.

The same forward runs in float32 and under the user's autocast precision (or, with the
``amp_what_if`` setting, a precision the user is considering); calls are compared in order.
"""

from __future__ import annotations

from typing import Any

from nandoctor.config import fix_config
from nandoctor.findings import CodeDoc, Finding, Fix, Severity, Where
from nandoctor.probes.base import Fact, Setting, Fold, Probe, ProbeResult
from nandoctor.measure.trace import forward_calls

LIMITS = {"fp16": 65504.0, "bf16": 3.3895e38}


class AmpProbe(Probe):
    name = "amp"
    description = "forward under the user's autocast precision beside float32: overflow or NaN only in half precision"
    order = 25
    requires = (Fact.FORWARD_RUNS,)
    codes = (
        CodeDoc("amp_overflow", 6,
                "finite in float32, but overflows or turns NaN under the user's autocast precision",
                "float16 tops out at 65,504: large logits or attention scores become Inf, then NaN.",
                "Contrastive logits divided by a temperature of 0.07 under fp16 autocast.",
                "Use bf16, keep the named module in float32, scale the logits down, or use a GradScaler."),
    )
    folds = (
        Fold("amp_overflow", "forward_nonfinite"),
    )

    settings = (
        Setting("amp_what_if", "", "amp_overflow for a float32 spec: fp16 or bf16 checks that precision as a what-if"),
        Setting("amp_near", 0.25, "warn when float32 activations reach this share of float16's largest value"),
    )

    def run(self, ctx: Any) -> ProbeResult:
        import torch

        precision = ctx.setup.amp or ctx.settings.amp_what_if or None
        if precision is None:
            return ProbeResult([], {"skipped": "the spec trains in float32 (set amp, or the amp_what_if setting)"})
        dtype = torch.float16 if precision == "fp16" else torch.bfloat16
        device_type = ctx.setup.device.type
        findings, raw = [], {"precision": precision, "what_if": ctx.setup.amp is None}
        for index in range(len(ctx.batches)):
            torch.manual_seed(ctx.settings.seed)
            full, _ = forward_calls(ctx, index)
            torch.manual_seed(ctx.settings.seed)
            half, error = forward_calls(ctx, index, torch.autocast(device_type=device_type, dtype=dtype))
            if error:
                raw["error"] = error
                findings.append(Finding("forward_error", Severity.CRITICAL,
                                        f"the forward raises under {precision} autocast: {error}", Where(),
                                        {"precision": precision, "message": error, "batch": index},
                                        Fix(advice="Make the named op accept half precision, or run it with "
                                                   "torch.autocast(..., enabled=False) and float32 inputs.")))
                break
            culprit = next((h for f, h in zip(full, half) if f.name == h.name and f.output_finite
                            and not h.output_finite), None)
            if culprit is not None:
                reference = next(f for f in full if f.name == culprit.name)
                findings.append(self._overflow(ctx, precision, culprit, reference, index))
                break
            near = self._near_limit(full, precision, ctx.settings.amp_near)
            if near is not None:
                raw["near_limit"] = near
        if not findings and raw.get("near_limit"):
            near = raw["near_limit"]
            findings.append(Finding(
                "amp_overflow", Severity.WARNING,
                f"module {near['module']!r} reaches {near['absmax']:,.4g} in float32, within {1 / ctx.settings.amp_near:g}x of "
                f"float16's limit 65,504",
                Where(module=near["module"]), dict(near, precision=precision),
                Fix(*fix_config(ctx.setup, "amp", "bf16")[:1],
                    advice=f"One larger batch overflows: scale down what {near['module']!r} computes, keep it "
                           "in float32, or use bf16.")))
        if findings and ctx.setup.amp is None:
            findings = [Finding(f.code, Severity.INFO, f"(what-if {precision}) {f.title}", f.where, f.evidence, f.fix)
                        for f in findings]
        return ProbeResult(findings, raw)

    @staticmethod
    def _near_limit(calls: list, precision: str, near: float) -> dict[str, Any] | None:
        if precision != "fp16":
            return None
        for call in calls:
            if call.out_absmax is not None and call.output_finite and call.out_absmax >= near * LIMITS["fp16"]:
                return {"module": call.name, "module_type": call.kind, "absmax": call.out_absmax,
                        "limit": LIMITS["fp16"]}
        return None

    @staticmethod
    def _overflow(ctx: Any, precision: str, culprit: Any, reference: Any, batch: int) -> Finding:
        limit = LIMITS[precision]
        config, note = fix_config(ctx.setup, "amp", "bf16") if precision == "fp16" else ({}, "")
        advice = (f"Module {culprit.name!r} reaches {reference.out_absmax:,.4g} in float32, beyond "
                  f"{precision}'s {limit:,.6g}: " if reference.out_absmax and reference.out_absmax > limit
                  else f"Module {culprit.name!r} loses range or precision in {precision}: ")
        advice += ("use bf16 (float32's range) instead of fp16, or keep this module in float32 "
                   "(torch.autocast(device_type, enabled=False) in its forward), or scale its output down "
                   "(divide attention scores by sqrt(d), use a larger temperature); a GradScaler guards "
                   "the gradients." + note)
        return Finding(
            "amp_overflow", Severity.CRITICAL,
            f"module {culprit.name!r} ({culprit.kind}) is finite in float32 (abs max {reference.out_absmax:,.4g}) "
            f"but overflows to Inf/NaN under {precision} autocast",
            Where(module=culprit.name),
            {"precision": precision, "float32_absmax": reference.out_absmax, "dtype_limit": limit,
             "autocast_min": culprit.out_min, "autocast_max": culprit.out_max, "module_type": culprit.kind,
             "batch": batch},
            Fix(config, advice))
