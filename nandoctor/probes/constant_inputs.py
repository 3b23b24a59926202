"""Inputs that carry no information: a model whose every weighted layer sees the same input for every sample.

A run fed a constant input (every feature the same value in every sample of every cached
batch) cannot learn anything that depends on the sample: the best it can do is predict the
mean target, so its loss stalls or, at a high rate, collapses. The LR sweep then reports a
rate problem; the cause is the data. Zero variance of a batch column alone does not decide it
(a bias column of ones, a one-hot slot no sample of these batches uses, ids fed to an
embedding beside it): the measurement is one forward of each cached batch in eval mode
(dropout off) with a pre-hook on every layer that has weights, recording whether the input
it receives differs between samples (dim 0) or between batches. When no layer ever sees a
difference, the output cannot depend on the sample. A single constant feature among varying
ones is reported as info only: it wastes a column, it does not stop learning.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from nandoctor.batches import iter_tensors
from nandoctor.context import RunContext
from nandoctor.errors import InternalError, UsageError
from nandoctor.findings import CodeDoc, Finding, Fix, Severity, Stage, Where
from nandoctor.measure.hooks import ours
from nandoctor.probes.base import Fold, Phase, Probe, ProbeResult
from nandoctor.probes.inputs import _gather, columns, feature_names_for


def _parametrized_leaf(module: Any) -> bool:
    return next(module.children(), None) is None and any(True for _ in module.parameters(recurse=False))


def _first_tensor(args: tuple, kwargs: dict) -> Any:
    return next((t for _, t in iter_tensors((args, kwargs))), None)


def layers_see_variation(ctx: RunContext) -> bool | None:
    """Whether some layer with weights receives an input that differs between samples or batches.

    None when the forward raises (the forward probe reports that) or there is no such layer.
    """
    import torch

    seen: dict[int, Any] = {}  # module id -> the first sample's input, to compare across batches
    varied = False
    leaves = [m for m in ctx.model.modules() if _parametrized_leaf(m)]
    if not leaves:
        return None

    def pre_hook(module: Any, args: tuple, kwargs: dict) -> None:
        nonlocal varied
        tensor = _first_tensor(args, kwargs)
        if varied or tensor is None or tensor.numel() == 0:
            return
        tensor = tensor.detach()
        if tensor.dim() >= 1 and tensor.shape[0] > 1 and bool((tensor != tensor[:1]).any()):
            varied = True
            return
        first = tensor[:1] if tensor.dim() >= 1 else tensor
        previous = seen.setdefault(id(module), first)
        if previous.shape != first.shape or bool((previous != first).any()):
            varied = True

    was_training = ctx.model.training
    ctx.model.eval()  # dropout would make identical inputs differ
    try:
        with ExitStack() as handles, torch.no_grad():
            for module in leaves:
                handles.enter_context(module.register_forward_pre_hook(ours(pre_hook), with_kwargs=True))
            for batch in ctx.batches:
                try:
                    ctx.loss(batch)
                except (UsageError, InternalError):
                    raise
                except Exception:
                    return None
                if varied:
                    break
    finally:
        ctx.model.train(was_training)
    return varied if seen or varied else None


def constant_columns(ctx: RunContext) -> tuple[dict[str, dict[str, float]], int]:
    """Per float batch tensor: its columns whose value never changes across the cached batches,
    and the most samples (dim 0) any tensor holds over those batches."""
    import torch

    floats, _ = _gather(ctx.batches)
    found, rows_seen = {}, 0
    for path, tensors in floats.items():
        images = tensors[0].dim() in (4, 5)
        tables = [t.reshape(-1, 1) if t.dim() == 1 else columns(t, images) for t in tensors]
        width = tables[0].shape[-1]
        if any(t.shape[-1] != width for t in tables):
            continue
        rows = torch.cat(tables)
        rows_seen = max(rows_seen, sum(t.shape[0] if t.dim() else 1 for t in tensors))
        if rows.shape[0] < 2:
            continue
        same = (rows == rows[:1]).all(dim=0).cpu().tolist()
        names = feature_names_for(path, width, ctx.setup.feature_names)
        values = rows[0].float().cpu().tolist()
        binary = bool(((rows == 0) | (rows == 1)).all())  # one-hot slots and masks: an unused slot is no bug
        found[path] = {
            (names[i] if names else f"{path}[{i}]" if tensors[0].dim() else path): values[i]
            for i in range(width)
            if same[i]
        }
        found[path]["__width__"] = width
        found[path]["__binary__"] = binary
    return found, rows_seen


def _critical(cause: Finding, symptom: Finding) -> bool:
    return cause.severity != Severity.INFO


class ConstantInputsProbe(Probe):
    name = "constant_inputs"
    description = "inputs that never change across samples and batches, so the model cannot learn from them"
    phase = Phase.DATA
    requires = ()
    codes = (
        CodeDoc(
            "constant_input",
            Stage.DATA,
            "the input (or a feature of it) has the same value in every sample of every batch checked",
            "A model whose layers see the same input for every sample can only learn the mean target: "
            "the loss stalls at the baseline, or collapses at a high rate, and no rate helps.",
            "A data pipeline that fills the feature tensor with torch.ones, or normalizes each sample "
            "by its own max so every row becomes the same.",
            "Check the data pipeline where the input tensor is built; a constant column is a wasted "
            "feature (drop it), a constant input is a bug.",
        ),
    )
    # what an input that never changes produces downstream: nothing to learn, so the dynamics stall or collapse
    folds = tuple(
        Fold("constant_input", symptom, _critical)
        for symptom in ("lr_too_high", "lr_too_low", "loss_plateau", "vanishing_gradients", "dead_units")
    )

    def run(self, ctx: RunContext) -> ProbeResult:
        constant, rows = constant_columns(ctx)
        raw: dict[str, Any] = {
            "constant_columns": {
                path: {k: v for k, v in found.items() if not k.startswith("__")} for path, found in constant.items()
            },
            "samples": rows,
        }
        if rows < 2:
            raw["skipped"] = "fewer than two samples cached: no variation to measure"
            return ProbeResult([], raw)
        whole = [p for p, c in constant.items() if len(c) - 2 == c["__width__"]]
        varies = layers_see_variation(ctx) if whole else True
        raw["layers_see_variation"] = varies
        findings = []
        if varies is False:
            findings.append(self._constant_input(whole, constant, rows, len(ctx.batches)))
        else:
            for path, found in constant.items():
                names = [k for k in found if not k.startswith("__")]
                if names and len(names) < found["__width__"] and not found["__binary__"]:
                    findings.append(self._constant_feature(path, names, found, rows))
        return ProbeResult(findings, raw)

    @staticmethod
    def _constant_input(paths: list[str], constant: dict, rows: int, batches: int) -> Finding:
        path = paths[0]
        values = {k: v for k, v in constant[path].items() if not k.startswith("__")}
        first = next(iter(values))
        shown = sorted(set(values.values()))[:4]
        return Finding(
            "constant_input",
            Severity.CRITICAL,
            f"input {path!r} is the same in all {rows} samples of {batches} batch(es) (value(s) {shown}): "
            "no layer with weights ever sees two different inputs, so nothing can be learned from the data",
            Where(feature=first),
            {
                "tensor": path,
                "constant_tensors": paths,
                "samples": rows,
                "batches": batches,
                "values": shown,
                "features": len(values),
                "layers_see_variation": False,
            },
            Fix(
                advice=f"Check where {path!r} is built in the data pipeline: every sample carries the same "
                "values (a placeholder tensor, a per-sample normalization that maps every row to one "
                "value, a wrong column selected). The learning rate is not the cause."
            ),
        )

    @staticmethod
    def _constant_feature(path: str, names: list[str], found: dict, rows: int) -> Finding:
        return Finding(
            "constant_input",
            Severity.INFO,
            f"{len(names)} of {found['__width__']} feature(s) of {path!r} never change across {rows} samples "
            f"(e.g. {names[0]!r} = {found[names[0]]:.4g})",
            Where(feature=names[0]),
            {"tensor": path, "features": {n: found[n] for n in names[:20]}, "count": len(names), "samples": rows},
            Fix(
                advice="A constant feature carries no information (a bias column of ones is redundant with "
                "the layers' biases): drop it, or check that the pipeline fills it."
            ),
        )
