"""Class labels outside the range their classification loss accepts, found before the loss runs.

The traced pass checks every ``cross_entropy`` / ``nll_loss`` target against the class count
the loss reads from its input (measure/labels.py) and stops the forward before the bad lookup;
this probe turns that record into a finding that names the labels, not the loss's code.
Float targets (regression, soft labels) are never judged.
"""

from __future__ import annotations

from typing import Any

from nandoctor.context import RunContext
from nandoctor.findings import CodeDoc, Finding, Fix, Severity, Stage, Where
from nandoctor.measure.trace import traced
from nandoctor.probes.base import Fold, Phase, Probe, ProbeResult


class LabelsProbe(Probe):
    name = "labels"
    description = "classification targets against the class count of the loss that reads them"
    phase = Phase.DATA
    requires = ()
    codes = (
        CodeDoc(
            "label_out_of_range",
            Stage.DATA,
            "classification targets fall outside the range the loss accepts (below 0, or at/above "
            "the number of classes), other than its ignore index",
            "cross_entropy indexes the logits with each label: on the CPU it raises inside the loss, "
            "on CUDA a device-side assert kills the process.",
            "Labels 1..10 for a 10-way head (1-based labels), or num_labels=2 for a 3-class dataset.",
            "Make the output width (num_labels, classes) at least the largest label + 1, remap the "
            "labels to 0..classes-1, or mark padding with the loss's ignore_index (-100).",
        ),
    )
    folds = (Fold("label_out_of_range", "forward_error"),)

    def run(self, ctx: RunContext) -> ProbeResult:
        for trace in traced(ctx):
            details = trace.crash.labels if trace.crash is not None else None
            if details:
                return ProbeResult([self._finding(trace.batch_index, details)], {"out_of_range": details})
        return ProbeResult([], {"checked": "every cross_entropy / nll_loss target in the traced batches"})

    @staticmethod
    def _finding(batch: int, details: dict[str, Any]) -> Finding:
        classes, low, high = details["classes"], details["min_label"], details["max_label"]
        path = details["tensor"]
        what = f"labels in {path!r}" if path is not None else "labels"
        if high >= classes:
            advice = (
                f"The {details['loss']} input has {classes} classes but labels reach {high}: make the "
                f"output width (num_labels / classes) at least {high + 1}, or remap the labels to "
                f"0..{classes - 1} (1-based labels need a -1)."
            )
        else:
            advice = (
                f"Negative labels ({low}) reach {details['loss']}: remap them, or mark padding with the "
                f"loss's ignore_index ({details['ignore_index']})."
            )
        return Finding(
            "label_out_of_range",
            Severity.CRITICAL,
            f"{what} span {low}..{high} but {details['loss']} accepts [0, {classes}): "
            f"{details['out_of_range']} of {details['total']} out of range",
            Where(feature=path, batch=batch, sample=details["sample"]),
            dict(details, batch=batch, range=[low, high]),
            Fix(advice=advice),
        )
