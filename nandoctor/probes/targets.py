"""Targets the loss cannot read as meant: outside its domain, or of a shape that broadcasts.

The traced pass judges every loss call's targets before the loss runs (measure/targets.py); this
probe turns the first record of each kind into a finding that names the loss, the targets'
range and count, the batch and sample, the shapes and the user's line. Soft targets in [0, 1],
class probabilities and label smoothing are in the domain and never judged.
"""

from __future__ import annotations

from typing import Any

from nandoctor.context import RunContext
from nandoctor.conventions import plays_a_game
from nandoctor.findings import CodeDoc, Finding, Fix, Severity, Stage, Where
from nandoctor.measure.trace import traced
from nandoctor.probes.base import Fold, Phase, Probe, ProbeResult


def _fmt(value: float) -> str:
    return f"{value:g}"


class TargetsProbe(Probe):
    name = "targets"
    description = "loss targets against the domain and the shape of the loss that reads them"
    phase = Phase.DATA
    codes = (
        CodeDoc(
            "target_out_of_range",
            Stage.DATA,
            "targets outside the domain of the loss that reads them (binary cross-entropy targets outside "
            "[0, 1], negative targets where the loss needs them >= 0, one-hot floats where class ids are "
            "expected, regression targets a sigmoid or tanh output cannot reach)",
            "The loss is unbounded below or meaningless outside its domain: it falls while the model "
            "learns nothing, or it raises.",
            "Segmentation masks saved as 0/255 fed to BCEWithLogitsLoss; standardized counts to PoissonNLLLoss.",
            "Map the targets into the loss's domain (mask / 255, raw counts), or pick the loss that matches "
            "the targets (class ids for cross_entropy, one-hot floats for BCE).",
        ),
        CodeDoc(
            "loss_shape_mismatch",
            Stage.DATA,
            "prediction and target of an elementwise loss have different shapes that silently broadcast",
            "(B,) against (B, 1) broadcasts to (B, B): every prediction is compared with every target, and "
            "the best the model can do is predict the mean.",
            "F.mse_loss(model(x).squeeze(-1), y) with y of shape (B, 1).",
            "Make both shapes equal (squeeze or unsqueeze one of them) before the loss.",
        ),
        CodeDoc(
            "loss_maximized",
            Stage.DATA,
            "every loss function the total is built from enters it with a negative sign: training climbs the loss",
            "A cross-entropy (or any loss bounded below) with a minus sign falls without bound as the model gets "
            "worse; the sweep sees a loss that keeps falling and asks for a higher rate.",
            "loss = -F.cross_entropy(logits, labels), a sign flipped when porting a log-likelihood objective.",
            "Minimize the loss itself: drop the minus sign (a log-likelihood is maximized by minimizing its "
            "negative, which cross_entropy already is).",
        ),
    )
    folds = (
        *(
            Fold("loss_maximized", symptom)  # what climbing the loss looks like, read as a rate problem
            for symptom in (
                "lr_too_low",
                "lr_too_high",
                "loss_plateau",
                "exploding_gradients",
                "activation_explosion",
                "forward_nonfinite",
                "grad_clip_too_aggressive",
            )
        ),
        Fold("target_out_of_range", "forward_error"),
        Fold("loss_shape_mismatch", "forward_error"),
        # an Inf CTC loss, a NaN mean over no target: the loss's value follows from its targets
        Fold("target_out_of_range", "forward_nonfinite", lambda c, s: c.evidence.get("problem") in _NONFINITE),
        Fold("target_out_of_range", "loss_component_nonfinite", lambda c, s: c.evidence.get("problem") in _NONFINITE),
        Fold("target_out_of_range", "loss_plateau"),
        Fold("loss_shape_mismatch", "loss_plateau"),
        Fold("target_out_of_range", "grad_clip_too_aggressive"),
        Fold("target_out_of_range", "lr_too_low"),
        # a bounded output chasing targets it cannot reach sits in its flat tails
        *(
            Fold("target_out_of_range", symptom, lambda c, s: c.evidence.get("problem") == "unreachable")
            for symptom in ("saturation", "vanishing_gradients")
        ),
        # the target's scale is the out-of-range target itself
        Fold("target_out_of_range", "unnormalized_input", lambda c, s: _same_tensor(c, s)),
    )

    def run(self, ctx: RunContext) -> ProbeResult:
        seen: dict[tuple, Finding] = {}
        for trace in traced(ctx):
            for record in trace.loss_checks:
                key = (record["kind"], record["loss"], record.get("problem"))
                if record["kind"] == "loss_maximized" and plays_a_game(ctx.model):
                    continue  # a player of a game maximizes the other's loss on purpose
                if key not in seen:
                    seen[key] = _finding(trace.batch_index, record)
        findings = list(seen.values())
        return ProbeResult(findings, {"checked": "every loss call's targets in the traced batches"})


_NONFINITE = ("ctc_lengths", "all_ignored")


def _same_tensor(cause: Finding, symptom: Finding) -> bool:
    tensor, feature = cause.where.feature, symptom.where.feature or ""
    return tensor is not None and (feature == tensor or feature.startswith(f"{tensor}["))


def _finding(batch: int, record: dict[str, Any]) -> Finding:
    if record["kind"] == "loss_shape_mismatch":
        return _shape_finding(batch, record)
    if record["kind"] == "loss_maximized":
        return _maximized_finding(batch, record)
    loss, problem, source = record["loss"], record["problem"], record.get("source")
    at = f" at {source}" if source else ""
    severity = Severity.CRITICAL
    if problem == "range":
        low, high = record["domain"]
        domain = f"[{_fmt(low)}, {_fmt(high)}]" if high is not None else f">= {_fmt(low)}"
        span = f"{_fmt(record['min_target'])}..{_fmt(record['max_target'])}"
        counted = f"{record['out_of_range']} of {record['total']} outside"
        title = f"{loss} targets span {span} but it needs {domain}: {counted}"
        if high is not None and record["max_target"] >= 2:
            advice = (
                f"The {loss} targets{at} reach {_fmt(record['max_target'])}: binary targets stored as 0/"
                f"{_fmt(record['max_target'])} (an 8-bit mask) must be divided by {_fmt(record['max_target'])} "
                f"(or thresholded) so they lie in [0, 1]."
            )
        elif high is not None:
            advice = f"Map the {loss} targets{at} into [0, 1] (probabilities or 0/1 labels)."
        else:
            advice = (
                f"{loss} needs non-negative targets{at} (counts, probabilities); these look standardized or "
                f"shifted: pass the raw values, or use a loss for real-valued targets (mse_loss)."
            )
    elif problem == "unreachable":
        low, high = record["domain"]
        activation = record["activation"]
        span = f"{_fmt(record['min_target'])}..{_fmt(record['max_target'])}"
        title = (
            f"{loss} targets span {span} but the prediction is a {activation} output, which only reaches "
            f"[{_fmt(low)}, {_fmt(high)}]: {record['out_of_range']} of {record['total']} targets are out of reach"
        )
        advice = (
            f"The model cannot predict these targets{at}: scale the targets into [{_fmt(low)}, {_fmt(high)}] "
            f"(and back at inference), or drop the final {activation} and predict the targets directly "
            f"(standardized)."
        )
        if record["out_of_range"] * 2 < record["total"]:
            severity = Severity.WARNING  # most targets reachable: it learns, but never fits the rest
    elif problem == "one_hot_ids":
        shape = tuple(record["target_shape"])
        title = f"{loss} gets one-hot integer targets of shape {shape} where class ids are expected"
        advice = f"Pass class ids{at}: target.argmax(dim=1), or one-hot floats (target.float()) as class probabilities."
    elif problem == "one_hot_floats":
        title = f"{loss} gets float targets of shape {tuple(record['target_shape'])} where class ids are expected"
        advice = f"nll_loss reads class ids{at}: pass target.argmax(dim=1), or use cross_entropy for probabilities."
    elif problem == "float_ids":
        title = f"{loss} gets float class ids of shape {tuple(record['target_shape'])} where integers are expected"
        advice = f"Pass the class ids as integers{at}: target.long()."
    elif problem == "ctc_lengths":
        title = (
            f"CTC input lengths are shorter than the target lengths on {record['out_of_range']} of "
            f"{record['total']} samples (sample {record['sample']}: {record['input_length']} frames for "
            f"{record['target_length']} labels)"
        )
        result = "contributes 0 and no gradient (zero_infinity)" if record["zero_infinity"] else "is Inf"
        advice = (
            f"A CTC target cannot be aligned to fewer input frames, so its loss {result}{at}. Pass the lengths "
            f"after any downsampling of the encoder (input_lengths // stride), or drop samples whose target is "
            f"longer than their input."
        )
        severity = Severity.WARNING if record["zero_infinity"] else Severity.CRITICAL
    else:  # all_ignored
        title = (
            f"every {loss} target in batch {batch} is the ignore index ({record['ignore_index']}): "
            f"the mean over no target is 0/0 = NaN"
        )
        advice = (
            f"No target in this batch counts{at}: skip such batches, or use reduction='sum' divided by "
            f"max(count, 1); check that padding or masking does not mark every label as ignored."
        )
    evidence = {k: v for k, v in record.items() if k not in ("kind",)}
    evidence["batch"] = batch
    return Finding(
        "target_out_of_range",
        severity,
        title,
        Where(feature=record.get("tensor"), source=source, batch=batch, sample=record.get("sample")),
        evidence,
        Fix(advice=advice),
    )


def _shape_finding(batch: int, record: dict[str, Any]) -> Finding:
    loss, source = record["loss"], record.get("source")
    prediction, target = tuple(record["input_shape"]), tuple(record["target_shape"])
    joined = record["broadcast_shape"]
    at = f" at {source}" if source else ""
    if joined is None:
        outcome = "do not broadcast: the loss raises"
    else:
        outcome = f"broadcast to {tuple(joined)}"
    title = f"{loss} compares a prediction of shape {prediction} with a target of shape {target}: they {outcome}"
    advice = (
        f"Make the shapes equal before {loss}{at}: squeeze the trailing 1 (pred.squeeze(-1) or "
        f"target.squeeze(-1)) or view both as (-1,)."
    )
    pairs = record["pairs_every_prediction_with_every_target"]
    if pairs:
        advice += " As written every prediction is compared with every target, so the model can only learn the mean."
    severity = Severity.CRITICAL if pairs or joined is None else Severity.WARNING
    return Finding(
        "loss_shape_mismatch",
        severity,
        title,
        Where(feature=record.get("tensor"), source=source, batch=batch),
        {k: v for k, v in record.items() if k != "kind"} | {"batch": batch},
        Fix(advice=advice),
    )


def _maximized_finding(batch: int, record: dict[str, Any]) -> Finding:
    loss, source = record["loss"], record.get("source")
    at = f" at {source}" if source else ""
    losses = ", ".join(record["losses"])
    return Finding(
        "loss_maximized",
        Severity.CRITICAL,
        f"the total loss falls as {losses} rises: it enters with d total / d {loss} = "
        f"{record['d_total_d_loss']:.3g}, so training climbs the loss instead of descending it",
        Where(source=source, batch=batch),
        {k: v for k, v in record.items() if k != "kind"} | {"batch": batch},
        Fix(
            advice=f"Remove the minus sign in front of {loss}{at}: {loss} is already the negative log-likelihood "
            f"(or a distance) to minimize; negated, its minimum is -inf and the model is pushed to be wrong."
        ),
    )
