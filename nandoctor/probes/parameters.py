"""Parameters and buffers before any step: non-finite values, tensors on different devices.

NaN is never fine. An infinite buffer whose values are only 0 and -inf is an additive attention
mask (``nn.Transformer.generate_square_subsequent_mask``): it is fine as long as the traced
forward stays finite.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from nandoctor.context import RunContext
from nandoctor.findings import CodeDoc, Finding, Fix, Severity, Stage, Where, is_finite
from nandoctor.measure.trace import traced
from nandoctor.probes.base import Fold, Phase, Probe, ProbeResult, owns_tensor


def owner(qualified_name: str) -> str:
    """``encoder.layers.0.weight`` -> ``encoder.layers.0`` (``""`` for the root)."""
    return qualified_name.rpartition(".")[0]


def _named_tensors(model: Any) -> list[tuple[str, str, Any]]:
    return [("parameter", n, p) for n, p in model.named_parameters()] + [
        ("buffer", n, b) for n, b in model.named_buffers() if b is not None
    ]


def _additive_mask(tensor: Any) -> bool:
    """Only 0 and -inf: a mask added to attention scores (NaN is never a mask)."""
    import torch

    values = tensor.detach()
    return bool(((values == 0) | torch.isneginf(values)).all())


def _forward_stays_finite(ctx: RunContext) -> bool:
    """Every module output of the traced batches is finite, and every loss that was computed."""
    traces = traced(ctx)
    return all(call.output_finite for trace in traces for call in trace.calls) and all(
        is_finite(trace.loss) for trace in traces if trace.crash is None
    )


class ParametersProbe(Probe):
    name = "parameters"
    description = "NaN/Inf in parameters or buffers at init; parameters and buffers on different devices"
    phase = Phase.DATA
    requires = ()
    codes = (
        CodeDoc(
            "device_mismatch",
            Stage.DEVICES,
            "parameters, buffers or batch tensors sit on different devices",
            "Ops on tensors from two devices raise, or silently copy every step.",
            "A buffer created in forward() on the CPU while the model lives on the GPU.",
            "Create tensors with device=x.device; register them as buffers so .to() moves them.",
        ),
        CodeDoc(
            "nonfinite_init",
            Stage.INIT,
            "a parameter or buffer holds NaN/Inf before any step",
            "Every output that touches it is NaN from the first step.",
            "Normalization statistics computed from an empty calibration set (mean of nothing = NaN).",
            "Re-initialize the named tensor; check the statistics it was computed from.",
        ),
    )
    folds = (
        Fold("nonfinite_init", "forward_nonfinite", owns_tensor),
        Fold("nonfinite_init", "loss_component_nonfinite"),
        Fold("nonfinite_init", "backward_nonfinite"),
        Fold("device_mismatch", "forward_error"),
    )

    def run(self, ctx: RunContext) -> ProbeResult:
        import torch

        tensors = _named_tensors(ctx.model)
        findings = []
        devices = Counter(str(t.device) for _, _, t in tensors)
        checkable = [
            (kind, n, t)
            for kind, n, t in tensors
            if t.is_floating_point() and t.device.type != "meta" and t.numel() > 0
        ]
        counts = (
            torch.stack(
                [(~torch.isfinite(t.detach())).sum().to(checkable[0][2].device) for _, _, t in checkable]
            ).tolist()
            if checkable
            else []
        )
        bad = [(kind, n, t, int(c)) for (kind, n, t), c in zip(checkable, counts) if c]
        masks = [n for kind, n, t, _ in bad if kind == "buffer" and _additive_mask(t)]
        if masks and _forward_stays_finite(ctx):
            bad = [row for row in bad if row[1] not in masks]
        else:
            masks = []
        if bad:
            findings.append(self._nonfinite(bad))
        if len(devices) > 1:
            findings.append(self._mismatch(tensors, devices))
        raw = {
            "tensors": len(tensors),
            "devices": dict(devices),
            "nonfinite": {n: c for _, n, _, c in bad},
            "additive_masks": masks,
            "parameters": sum(t.numel() for kind, _, t in tensors if kind == "parameter"),
        }
        return ProbeResult(findings, raw)

    @staticmethod
    def _nonfinite(bad: list[tuple[str, str, Any, int]]) -> Finding:
        import torch

        kind, name, tensor, count = bad[0]
        nan = int(torch.isnan(tensor).sum())
        where = Where(module=owner(name), parameter=name if kind == "parameter" else None)
        return Finding(
            code="nonfinite_init",
            severity=Severity.CRITICAL,
            title=f"{kind} {name} holds {count} NaN/Inf value(s) of {tensor.numel()} before any step",
            where=where,
            evidence={
                "tensor": name,
                "kind": kind,
                "nonfinite": count,
                "nan": nan,
                "inf": count - nan,
                "numel": tensor.numel(),
                "all_nonfinite": {n: c for _, n, _, c in bad[:20]},
            },
            fix=Fix(
                advice=f"Re-initialize {name} (and the {len(bad) - 1} other listed tensor(s)); if it "
                "was computed from data (normalization statistics, a mean over an empty "
                "set), check that data."
            ),
        )

    @staticmethod
    def _mismatch(tensors: list[tuple[str, str, Any]], devices: Counter) -> Finding:
        majority = devices.most_common(1)[0][0]
        strays = [(kind, n, str(t.device)) for kind, n, t in tensors if str(t.device) != majority]
        kind, name, device = strays[0]
        return Finding(
            code="device_mismatch",
            severity=Severity.CRITICAL,
            title=f"{len(strays)} tensor(s) are not on {majority}: {kind} {name} is on {device}",
            where=Where(module=owner(name), parameter=name if kind == "parameter" else None),
            evidence={
                "devices": dict(devices),
                "majority": majority,
                "strays": [{"kind": k, "name": n, "device": d} for k, n, d in strays[:20]],
            },
            fix=Fix(
                advice=f"Move the whole model with model.to({majority!r}); create tensors inside "
                "modules as registered buffers or with device=x.device, never on a fixed device."
            ),
        )
