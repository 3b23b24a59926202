"""Backward pass: where gradients first turn NaN/Inf while the forward pass is finite."""

from __future__ import annotations

from typing import Any

from nandoctor.context import RunContext
from nandoctor.findings import CodeDoc, Finding, Fix, Severity, Stage, Where
from nandoctor.measure.grad_origin import find_gradient_origin
from nandoctor.measure.trace import BatchTrace, traced
from nandoctor.probes.base import Fact, Phase, Probe, ProbeResult

# Autograd ops whose gradient is non-finite at a point where their value is finite.
OP_ADVICE = {
    "LinalgVectorNormBackward0": "the norm of an all-zero vector has a NaN gradient (0/0): use "
    "x.norm(...).clamp_min(eps) or F.normalize(x, eps=1e-6)",
    "NormBackward1": "the norm of an all-zero vector has a NaN gradient (0/0): clamp it with eps",
    "SqrtBackward0": "sqrt at 0 has an infinite gradient: use sqrt(x + eps)",
    "AcosBackward0": "acos at ±1 has an infinite gradient: clamp its input to [-1 + 1e-6, 1 - 1e-6]",
    "AsinBackward0": "asin at ±1 has an infinite gradient: clamp its input to [-1 + 1e-6, 1 - 1e-6]",
    "PowBackward0": "x ** p with p < 1 at x = 0 has an infinite gradient: add eps to x",
    "DivBackward0": "a division by a value near 0: add eps to the denominator",
    "LogBackward0": "log at 0 has an infinite gradient: use log(x + eps) or log_softmax",
    "RsqrtBackward0": "rsqrt near 0: add eps inside",
    "WhereBackward0": "torch.where passes NaN gradients from the branch it did not select: "
    "make both branches finite (clamp the input of the unsafe branch)",
}


def _parameter_near(trace: BatchTrace, module: str | None) -> str | None:
    """A parameter with a non-finite gradient, preferably inside ``module``."""
    import math

    bad = [name for name, norm in trace.grad_norms.items() if not math.isfinite(norm)]
    if not bad:
        return None
    if module:
        inside = [name for name in bad if name.startswith(module + ".")]
        if inside:
            return inside[0]
    return bad[-1]


class BackwardProbe(Probe):
    name = "backward"
    description = "where gradients first turn NaN/Inf in the backward pass while the forward is finite"
    phase = Phase.BACKWARD
    requires = (Fact.FORWARD_OK,)
    provides = (Fact.BACKWARD_OK,)
    codes = (
        CodeDoc(
            "backward_nonfinite",
            Stage.BACKWARD_VALUES,
            "the forward pass is finite but gradients turn NaN/Inf",
            "The optimizer step writes NaN into the weights; the next forward is NaN.",
            "x.norm() of an all-zero vector: finite value, NaN gradient (0/0).",
            "Add eps inside the op named in the finding (sqrt(x + eps), clamp before acos).",
        ),
        CodeDoc(
            "backward_error",
            Stage.BACKWARD_VALUES,
            "loss.backward() raised an exception",
            "No gradient, no step: usually an in-place op modified a tensor autograd saved.",
            "x += 1 on the output of a sigmoid that backward needs.",
            "Replace the in-place op named in the message with its out-of-place form.",
        ),
    )

    def run(self, ctx: RunContext) -> ProbeResult:
        trace = traced(ctx)[-1]
        raw: dict[str, Any] = {"batch": trace.batch_index, "backward_error": trace.backward_error}
        if trace.backward_error and "does not require grad" not in trace.backward_error:
            finding = Finding(
                "backward_error",
                Severity.CRITICAL,
                f"loss.backward() raised {trace.backward_error}",
                Where(),
                {"error": trace.backward_error, "batch": trace.batch_index},
                Fix(
                    advice="Usually an in-place op on a tensor autograd saved "
                    "(x += ..., relu_(...)): replace it with the out-of-place form."
                ),
            )
            return ProbeResult([finding], raw, facts={Fact.BACKWARD_OK: False})
        if trace.backward_finite:
            return ProbeResult([], raw, facts={Fact.BACKWARD_OK: True})
        origin = find_gradient_origin(ctx, trace.batch_index) or {}
        module = origin.get("module")
        if module is None and not origin.get("loss_side") and trace.first_nonfinite_grad_call is not None:
            module = trace.calls[trace.first_nonfinite_grad_call].name
        parameter = _parameter_near(trace, module)
        op = origin.get("op")
        nonfinite = sorted(n for n, v in trace.grad_norms.items() if v != v or v in (float("inf"), float("-inf")))
        source = origin.get("source")  # the user's line whose op created the node
        place = "the loss function" if origin.get("loss_side") else f"module {module!r}"
        title = (
            f"gradients turn NaN/Inf in {place}"
            + (f" at {op}" if op else "")
            + (f" (made at {source})" if source else "")
            + " while the forward is finite"
        )
        evidence = {
            "op": op,
            "source": source,
            "batch": trace.batch_index,
            "loss": trace.loss,
            "nonfinite_grad_parameters": len(nonfinite),
            "examples": nonfinite[:10],
            "location": "loss function" if origin.get("loss_side") else "module",
        }
        advice = OP_ADVICE.get(op or "", "add eps to the divisions, norms, sqrt and logs on that path")
        raw["origin"] = origin
        return ProbeResult(
            [
                Finding(
                    "backward_nonfinite",
                    Severity.CRITICAL,
                    title,
                    Where(module=module, parameter=parameter, op=op, source=source),
                    evidence,
                    Fix(advice=f"In {place}" + (f", at {source}" if source else "") + f": {advice}."),
                )
            ],
            raw,
            facts={Fact.BACKWARD_OK: False},
        )
