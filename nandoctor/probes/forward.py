"""Forward pass: the first module that turns finite inputs into NaN/Inf, or that raises.

After a failure (and only then) the op-level pass names the op and the user's line that made the
NaN/Inf or raised: in a module, in the code between modules, or in the loss function.
"""

from __future__ import annotations

from typing import Any

from nandoctor.context import RunContext
from nandoctor.findings import CodeDoc, Finding, Fix, Severity, Stage, Where, is_finite
from nandoctor.measure.ops import OpPass, locate_nonfinite_op
from nandoctor.measure.trace import BatchTrace, ModuleCall, traced
from nandoctor.probes.base import Fact, Fold, Phase, Probe, ProbeResult, inside_module

_DEVICE_ERRORS = ("same device", "device type", "Expected all tensors to be on")
_MATMUL = "a matrix product overflows: scale its inputs down (normalize embeddings, divide scores by sqrt(d))"
# What makes each aten op's output non-finite from finite inputs, and the usual repair.
OP_ADVICE = {
    "aten::log": "log(0) is -inf: use log_softmax / logsumexp / cross_entropy instead of log(softmax), "
    "or log(x.clamp_min(eps))",
    "aten::div": "a division by 0 (0 / 0 is NaN): add eps to the denominator or clamp it "
    "(x / x.sum(-1, keepdim=True).clamp_min(eps))",
    "aten::sqrt": "sqrt of a negative number is NaN: clamp its input at 0 first",
    "aten::rsqrt": "rsqrt of 0 is Inf: add eps inside",
    "aten::exp": "exp overflows above ~88 in float32 (~11 in float16): subtract the max first, or use "
    "logsumexp / softmax",
    "aten::pow": "a power of 0 with a negative exponent, or of a negative base with a fractional one: clamp the base",
    "aten::acos": "acos outside [-1, 1] is NaN: clamp its input to [-1 + 1e-6, 1 - 1e-6]",
    "aten::asin": "asin outside [-1, 1] is NaN: clamp its input to [-1 + 1e-6, 1 - 1e-6]",
    "aten::_softmax": "a softmax over a row that is -inf everywhere (fully masked) is NaN: keep one "
    "position unmasked, or mask with torch.finfo(dtype).min instead of -inf",
    "aten::_to_copy": "a cast to a narrower float type overflows: the value is beyond that type's range",
    "aten::mm": _MATMUL,
    "aten::bmm": _MATMUL,
    "aten::addmm": _MATMUL,
    "aten::baddbmm": _MATMUL,
}
_DEFAULT_ADVICE = (
    "log of values that reach 0 (use log_softmax/logsumexp), division by a norm or count "
    "that can be 0 (add eps), exp of large values (subtract the max), sqrt/pow of negatives"
)


def op_place(site) -> str:
    """``aten::div at model.py:42 in module 'pool'`` (or ``in the loss function``)."""
    return f"{site.op}" + (f" at {site.source}" if site.source else "") + f" in {module_place(site.module)}"


def module_place(module: str | None) -> str:
    """How a report names where code runs: a module, the root model's own forward, or the loss function."""
    if module is None:
        return "the loss function"
    return "the model's own forward (module '')" if module == "" else f"module {module!r}"


def first_nonfinite_call(trace: BatchTrace) -> tuple[ModuleCall, str | None] | None:
    """The first call (in finishing order) with a non-finite output, and where the NaN arose.

    When that call's inputs were already non-finite, the NaN was made by its parent's own code
    between child calls, so the parent is named instead.
    """
    for call in trace.calls:
        if not call.output_finite:
            if call.input_finite:
                return call, call.name
            return call, call.parent
    return None


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.4g}"


class ForwardProbe(Probe):
    name = "forward"
    description = "first module whose forward turns finite numbers into NaN/Inf, or that raises"
    phase = Phase.FORWARD
    requires = ()
    provides = (Fact.FORWARD_RUNS, Fact.FORWARD_OK)
    codes = (
        CodeDoc(
            "forward_error",
            Stage.FORWARD_ERROR,
            "the model's forward (or the loss function) raised an exception",
            "Training cannot start; the message and the module that raised say why.",
            "A shape mismatch between an encoder's output and a head's Linear.",
            "Fix the module named in the finding; the message is the one torch raised.",
        ),
        CodeDoc(
            "forward_nonfinite",
            Stage.FORWARD_VALUES,
            "a module's forward turns finite inputs into NaN/Inf; where.module is the first such module",
            "Once an activation is NaN the loss and every gradient are NaN.",
            "torch.log(torch.softmax(x)) where softmax underflows to 0, giving log(0) = -inf.",
            "Use the numerically stable op (log_softmax, logsumexp), clamp or add eps before "
            "log/div/sqrt, keep exp arguments bounded.",
        ),
    )
    folds = (Fold("forward_nonfinite", "loss_component_nonfinite", inside_module),)

    def run(self, ctx: RunContext) -> ProbeResult:
        traces = traced(ctx)
        last = traces[-1]
        raw = {
            "batches_traced": len(traces),
            "loss": last.loss,
            "components": last.components,
            "modules_called": len(last.calls),
        }
        if last.crash is not None:
            raw["crash"] = vars(last.crash)
            ops = None
            if not last.crash.stopped_by_check and not _device_error(last.crash.message):
                ops = locate_nonfinite_op(ctx, last.batch_index)  # what our checks stopped is not re-run
            raw["op_pass"] = ops.to_raw() if ops else "not run: a check stopped the forward, or devices differ"
            return ProbeResult([self._crash(last, ops)], raw, facts={Fact.FORWARD_OK: False, Fact.FORWARD_RUNS: False})
        if last.forward_finite:
            raw["op_pass"] = "not run: the traced pass was finite"
            return ProbeResult([], raw, facts={Fact.FORWARD_OK: True, Fact.FORWARD_RUNS: True})
        nan = {Fact.FORWARD_OK: False, Fact.FORWARD_RUNS: True}
        if _batch_nonfinite(ctx.batches[last.batch_index]):
            raw["nonfinite_batch"] = last.batch_index  # the input probe names the feature
            raw["op_pass"] = "not run: the batch itself holds NaN/Inf"
            return ProbeResult([], raw, facts=nan)
        ops = locate_nonfinite_op(ctx, last.batch_index)
        raw["op_pass"] = ops.to_raw()
        return ProbeResult([self._nonfinite(last, ops)], raw, facts=nan)

    @staticmethod
    def _crash(trace: BatchTrace, ops: OpPass | None = None) -> Finding:
        crash = trace.crash
        evidence = {
            "exception": crash.exc_type,
            "message": crash.message,
            "raised_at": crash.location,
            "module_type": crash.kind,
            "executed_before": crash.executed,
            "batch": trace.batch_index,
            "source": crash.source,
            "installed_package": crash.package,
        }
        if crash.embedding is not None or (
            crash.exc_type == "IndexError" and crash.kind in ("Embedding", "EmbeddingBag")
        ):
            details = crash.embedding or {}
            evidence.update(details)
            size = details.get("num_embeddings")
            high = details.get("max_id")
            title = (
                f"ids {details.get('min_id')}..{high} reach embedding {crash.module!r} with num_embeddings={size}"
                if details
                else f"embedding {crash.module!r} raised IndexError"
            )
            advice = (
                f"Make num_embeddings at least {high + 1} (the largest id + 1) or remap the ids "
                "into the vocabulary; on CUDA this crashes with a device-side assert."
                if details and high is not None and high >= (size or 0)
                else "Negative ids reach the embedding: check the id mapping / padding value."
            )
            return Finding(
                "index_out_of_range",
                Severity.CRITICAL,
                title,
                Where(module=crash.module, source=crash.source),
                evidence,
                Fix(advice=advice),
            )
        place = (
            "the loss function"
            if crash.module is None
            else f"the model ({crash.kind})"
            if crash.module == ""
            else f"module {crash.module!r} ({crash.kind})"
        )
        if _device_error(crash.message):
            return Finding(
                "device_mismatch",
                Severity.CRITICAL,
                f"{place} mixes devices: {crash.message}",
                Where(module=crash.module, source=crash.source),
                evidence,
                Fix(
                    advice="Create tensors inside forward with device=x.device, or register "
                    "them as buffers so model.to() moves them."
                ),
            )
        op = ops.crash.op if ops is not None and ops.crash is not None else None
        evidence["op"] = op
        return Finding(
            "forward_error",
            Severity.CRITICAL,
            f"{place} raised {crash.exc_type}" + (f" in {op}" if op else "") + f": {crash.message}",
            Where(module=crash.module, op=op, source=crash.source),
            evidence,
            Fix(advice=_crash_advice(crash)),
        )

    @staticmethod
    def _nonfinite(trace: BatchTrace, ops: OpPass) -> Finding:
        found = first_nonfinite_call(trace)
        site = ops.site
        evidence: dict[str, Any] = {"batch": trace.batch_index, "loss": trace.loss}
        if site is not None:
            evidence.update({"op": site.op, "source": site.source, "op_dtype": site.dtype, "op_made": site.made})
        advice = OP_ADVICE.get(site.op, _DEFAULT_ADVICE) if site is not None else _DEFAULT_ADVICE
        at = f"At {site.source}: " if site is not None and site.source else ""
        if found is None or (site is not None and site.module is None):
            bad = [k for k, v in trace.components.items() if not is_finite(v)]
            component = bad[0] if bad else None
            what = f"loss component {component!r}" if component else "the loss"
            evidence.update({"components": trace.components, "location": "loss function"})
            value = trace.loss if not component else trace.components[component]
            title = (
                f"{site.op}" + (f" at {site.source}" if site.source else "") + " in the loss function "
                f"makes {what} {value}"
                if site is not None and site.module is None
                else f"every module output is finite but {what} is {value}"
            )
            return Finding(
                "forward_nonfinite",
                Severity.CRITICAL,
                title,
                Where(
                    module=None, component=component, op=site.op if site else None, source=site.source if site else None
                ),
                evidence,
                Fix(advice=f"{at}the NaN/Inf is made in the loss function: {advice}."),
            )
        call, origin = found
        evidence.update(
            {
                "module_type": call.kind,
                "input_min": call.in_min,
                "input_max": call.in_max,
                "output_min": call.out_min,
                "output_max": call.out_max,
            }
        )
        if trace.culprit_counts:
            evidence.update(trace.culprit_counts)
        if site is not None:
            origin = site.module
            title = f"{op_place(site)} turns finite values into {'NaN' if site.made == 'nan' else 'Inf'}"
        elif origin != call.name:
            evidence["first_nonfinite_output"] = call.name
            title = f"module {origin!r} makes NaN/Inf in its own forward code before calling {call.name!r}"
        else:
            title = (
                f"module {call.name!r} ({call.kind}) turns finite inputs "
                f"[{_fmt(call.in_min)}, {_fmt(call.in_max)}] into NaN/Inf "
                f"[{_fmt(call.out_min)}, {_fmt(call.out_max)}]"
            )
        return Finding(
            "forward_nonfinite",
            Severity.CRITICAL,
            title,
            Where(module=origin, op=site.op if site else None, source=site.source if site else None),
            evidence,
            Fix(advice=f"{at}in {module_place(origin)}: {advice}."),
        )


def _device_error(message: str) -> bool:
    return any(marker in message for marker in _DEVICE_ERRORS)


def _crash_advice(crash: Any) -> str:
    """Point at the user's line, never into an installed package."""
    inside = f" inside the installed package {crash.package!r}" if crash.package else ""
    if crash.source:
        return (
            f"The error is raised{inside} by the call at {crash.source}: fix that line or what it "
            "passes (shapes, dtypes, label and id ranges); the modules that ran before it are in "
            "the evidence."
        )
    if crash.package:
        return (
            f"The error is raised inside the installed package {crash.package!r}, called by nandoctor "
            "with your batch: check what the batch holds for it (keys, shapes, label and id ranges) "
            "and its config."
        )
    return f"Fix the code at {crash.location}; the modules that ran before it are listed in the evidence."


def _batch_nonfinite(batch: Any) -> bool:
    import torch

    from nandoctor.measure.trace import float_tensors

    return any(not bool(torch.isfinite(t).all()) for t in float_tensors(batch))
