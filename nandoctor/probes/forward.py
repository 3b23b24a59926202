"""Forward pass: the first module that turns finite inputs into NaN/Inf, or that raises."""

from __future__ import annotations

from typing import Any

from nandoctor.findings import CodeDoc, is_finite, Finding, Fix, Severity, Where
from nandoctor.probes.base import Fact, Fold, Probe, ProbeResult, inside_module
from nandoctor.measure.trace import BatchTrace, ModuleCall, traced

_DEVICE_ERRORS = ("same device", "device type", "Expected all tensors to be on")


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
    order = 20
    requires = ()
    provides = (Fact.FORWARD_RUNS, Fact.FORWARD_OK)
    codes = (
        CodeDoc("forward_error", 4,
                "the model's forward (or the loss function) raised an exception",
                "Training cannot start; the message and the module that raised say why.",
                "A shape mismatch between an encoder's output and a head's Linear.",
                "Fix the module named in the finding; the message is the one torch raised."),
        CodeDoc("forward_nonfinite", 5,
                "a module's forward turns finite inputs into NaN/Inf; where.module is the first such module",
                "Once an activation is NaN the loss and every gradient are NaN.",
                "torch.log(torch.softmax(x)) where softmax underflows to 0, giving log(0) = -inf.",
                "Use the numerically stable op (log_softmax, logsumexp), clamp or add eps before "
                "log/div/sqrt, keep exp arguments bounded."),
    )
    folds = (
        Fold("forward_nonfinite", "loss_component_nonfinite", inside_module),
    )

    def run(self, ctx: Any) -> ProbeResult:
        traces = traced(ctx)
        last = traces[-1]
        raw = {"batches_traced": len(traces), "loss": last.loss, "components": last.components,
               "modules_called": len(last.calls)}
        if last.crash is not None:
            raw["crash"] = vars(last.crash)
            return ProbeResult([self._crash(last)], raw, facts={Fact.FORWARD_OK: False, Fact.FORWARD_RUNS: False})
        if last.forward_finite:
            return ProbeResult([], raw, facts={Fact.FORWARD_OK: True, Fact.FORWARD_RUNS: True})
        nan = {Fact.FORWARD_OK: False, Fact.FORWARD_RUNS: True}
        if _batch_nonfinite(ctx.batches[last.batch_index]):
            raw["nonfinite_batch"] = last.batch_index  # the input probe names the feature
            return ProbeResult([], raw, facts=nan)
        return ProbeResult([self._nonfinite(last)], raw, facts=nan)

    @staticmethod
    def _crash(trace: BatchTrace) -> Finding:
        crash = trace.crash
        evidence = {"exception": crash.exc_type, "message": crash.message, "raised_at": crash.location,
                    "module_type": crash.kind, "executed_before": crash.executed,
                    "batch": trace.batch_index}
        if crash.embedding is not None or (crash.exc_type == "IndexError" and crash.kind in ("Embedding", "EmbeddingBag")):
            details = crash.embedding or {}
            evidence.update(details)
            size = details.get("num_embeddings")
            high = details.get("max_id")
            title = (f"ids {details.get('min_id')}..{high} reach embedding {crash.module!r} with "
                     f"num_embeddings={size}" if details else f"embedding {crash.module!r} raised IndexError")
            advice = (f"Make num_embeddings at least {high + 1} (the largest id + 1) or remap the ids "
                      "into the vocabulary; on CUDA this crashes with a device-side assert."
                      if details and high is not None and high >= (size or 0)
                      else "Negative ids reach the embedding: check the id mapping / padding value.")
            return Finding("index_out_of_range", Severity.CRITICAL, title,
                           Where(module=crash.module), evidence, Fix(advice=advice))
        if any(marker in crash.message for marker in _DEVICE_ERRORS):
            return Finding("device_mismatch", Severity.CRITICAL,
                           f"module {crash.module!r} mixes devices: {crash.message}",
                           Where(module=crash.module), evidence,
                           Fix(advice="Create tensors inside forward with device=x.device, or register "
                                      "them as buffers so model.to() moves them."))
        place = f"module {crash.module!r} ({crash.kind})" if crash.module is not None else "the loss function"
        return Finding("forward_error", Severity.CRITICAL,
                       f"{place} raised {crash.exc_type}: {crash.message}",
                       Where(module=crash.module), evidence,
                       Fix(advice=f"Fix the code at {crash.location}; the modules that ran before it "
                                  f"are listed in the evidence."))

    @staticmethod
    def _nonfinite(trace: BatchTrace) -> Finding:
        found = first_nonfinite_call(trace)
        evidence: dict[str, Any] = {"batch": trace.batch_index, "loss": trace.loss}
        if found is None:
            bad = [k for k, v in trace.components.items() if not is_finite(v)]
            component = bad[0] if bad else None
            what = f"loss component {component!r}" if component else "the loss"
            evidence.update({"components": trace.components, "location": "loss function"})
            return Finding("forward_nonfinite", Severity.CRITICAL,
                           f"every module output is finite but {what} is {trace.loss if not component else trace.components[component]}",
                           Where(module=None, component=component), evidence,
                           Fix(advice="The NaN/Inf is made in the loss function: use log_softmax / "
                                      "cross_entropy instead of log(softmax), add eps to divisions, "
                                      "norms and logs, clamp before acos/sqrt."))
        call, origin = found
        evidence.update({"module_type": call.kind, "input_min": call.in_min, "input_max": call.in_max,
                         "output_min": call.out_min, "output_max": call.out_max})
        if trace.culprit_counts:
            evidence.update(trace.culprit_counts)
        if origin != call.name:
            evidence["first_nonfinite_output"] = call.name
            title = (f"module {origin!r} makes NaN/Inf in its own forward code before calling "
                     f"{call.name!r}")
        else:
            title = (f"module {call.name!r} ({call.kind}) turns finite inputs "
                     f"[{_fmt(call.in_min)}, {_fmt(call.in_max)}] into NaN/Inf "
                     f"[{_fmt(call.out_min)}, {_fmt(call.out_max)}]")
        return Finding("forward_nonfinite", Severity.CRITICAL, title, Where(module=origin), evidence,
                       Fix(advice=f"Look at the forward of {origin!r}: log of values that reach 0 "
                                  "(use log_softmax/logsumexp), division by a norm or count that can be "
                                  "0 (add eps), exp of large values (subtract the max), sqrt/pow of "
                                  "negatives."))


def _batch_nonfinite(batch: Any) -> bool:
    import torch

    from nandoctor.measure.trace import float_tensors

    return any(not bool(torch.isfinite(t).all()) for t in float_tensors(batch))
