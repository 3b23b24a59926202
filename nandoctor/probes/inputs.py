"""The cached batches themselves: NaN/Inf, features far from unit scale, ids beyond a vocabulary.

Float features get the same statistics and flags as ``nandoctor feature-stats`` (one copy of
each input tensor to the host); image-like batches (N, C, H, W) per channel. A flagged scale is
judged where the feature is first consumed by a layer with weights (measure/consumers.py): a
model that standardizes it in its own forward, or feeds it to a normalization layer first, is
fine; a tensor that reaches no weight at all is a target. Ids are judged by what actually
reached an embedding in the traced pass (its pre-hook stops the forward before a bad lookup).
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from nandoctor.batches import dense, iter_tensors
from nandoctor.context import RunContext
from nandoctor.featurestats.columns import ColumnSummary, FlagLimits, StreamingColumn
from nandoctor.findings import CodeDoc, Finding, Fix, Severity, Stage, Where
from nandoctor.measure.consumers import Consumer, first_consumers
from nandoctor.measure.target_scale import standardized_target_control
from nandoctor.measure.trace import traced
from nandoctor.probes.base import Fold, Phase, Probe, ProbeResult, Setting

MAX_ROWS = 200_000
NORMALIZATION_LAYERS = ("BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm", "RMSNorm", "LocalResponseNorm")


def _with_control(finding: Finding, control: dict | None) -> Finding:
    finding.evidence["standardized_control"] = control
    if not target_drives_gradient(finding):
        return finding
    said = (
        f" Control: with this target standardized the first step's gradient norm is {control['ratio']:.3g}x "
        f"smaller ({control['grad_norm']:.4g} -> {control['grad_norm_standardized']:.4g}): the target's scale, "
        "not the rate or the clip, sets the size of every step."
    )
    return replace(finding, fix=replace(finding.fix, advice=finding.fix.advice + said))


# standardizing the target cuts the first step's gradient by this factor or more: its scale drives training
TARGET_DRIVES_GRADIENT = 10.0


def target_drives_gradient(cause: Finding) -> bool:
    control = cause.evidence.get("standardized_control") or {}
    return cause.evidence.get("role") == "target" and control.get("ratio", 0.0) >= TARGET_DRIVES_GRADIENT


def clip_follows_target(cause: Finding, clip: Finding) -> bool:
    """The clip bites hard only because of the target's scale: standardized, it would not (factor < 10)."""
    if not target_drives_gradient(cause):
        return False
    ratio = cause.evidence["standardized_control"]["ratio"]
    return clip.evidence.get("median_clip_factor", float("inf")) / ratio < TARGET_DRIVES_GRADIENT


def feature_names_for(path: str, width: int, feature_names: Any) -> list[str] | None:
    """The spec's names for the last dimension of the tensor at ``path`` (docs/reference.md §1).

    A list names every float input whose last dimension has that many columns; a mapping is
    keyed by the batch key (dict batches) or position (tuple batches).
    """
    names = feature_names
    if isinstance(feature_names, dict):
        names = feature_names.get(path)
        if names is None and path.isdigit():
            names = feature_names.get(int(path))
    if isinstance(names, (list, tuple)) and len(names) == width:
        return [str(n) for n in names]
    return None


def columns(tensor: Any, channels_first: bool) -> Any:
    """Rows x features: channels (dim 1) of an image-like map, else the last dimension."""
    if tensor.dim() == 0:
        return tensor.reshape(1, 1)
    if channels_first and tensor.dim() >= 3:
        return tensor.movedim(1, -1).reshape(-1, tensor.shape[1])
    return tensor.reshape(-1, tensor.shape[-1])


def _image_like(tensor: Any) -> bool:
    return tensor.dim() in (4, 5)  # (N, C, H, W) and (N, C, T, H, W)


def _gather(batches: list[Any]) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """Tensors by path across batches: floats and integers."""
    floats: dict[str, list[Any]] = {}
    ints: dict[str, list[Any]] = {}
    for batch in batches:
        for path, tensor in iter_tensors(batch):
            if tensor.numel() == 0 or tensor.dtype.is_complex:
                continue
            target = floats if tensor.is_floating_point() else ints if tensor.dtype != _bool() else None
            if target is not None:
                target.setdefault(path, []).append(dense(tensor.detach()))
    return floats, ints


def _bool():
    import torch

    return torch.bool


def feature_summaries(
    path: str, tensors: list[Any], feature_names: Any, limits: FlagLimits = FlagLimits()
) -> list[ColumnSummary]:
    """One summary per feature (last dimension) of a float tensor, over all cached batches."""
    import torch

    images = _image_like(tensors[0])
    tables = [columns(t, images) for t in tensors]
    width = tables[0].shape[-1]
    if any(t.shape[-1] != width for t in tables):
        return []
    rows = torch.cat(tables)[:MAX_ROWS]
    matrix = rows.float().cpu().numpy()  # one copy to the host per input tensor
    names = feature_names_for(path, width, feature_names)
    summaries = []
    for index in range(width):
        label = names[index] if names else (f"{path}[{index}]" if tensors[0].dim() else path)
        column = StreamingColumn(label, "float")
        column.add(matrix[:, index])
        summaries.append(column.summary(limits))
    return summaries


FLAG_MEANINGS = (
    "not_normalized when a feature's std is above this",
    "... or its |p1| or |p99| is above this",
    "... or its |mean| is above this many stds (at least 1)",
    "not_normalized (too small) when the std is below this",
    "... and |p1|, |p99| are below this",
    "heavy_tail when the max lies this many p50..p99 spreads beyond the median",
    "integer_ids needs a range at least this wide",
    "... and at least this many distinct values",
    "... covering at least this share of the range",
)


def flag_limits(settings: Any) -> FlagLimits:
    """The column-flag cut-offs from the run's settings (``input_std_max``, ...)."""
    return FlagLimits(**{f.name: getattr(settings, f"input_{f.name}") for f in fields(FlagLimits)})


def still_flagged(consumer: Consumer, limits: FlagLimits) -> list[int] | None:
    """Columns of what the first weighted layer sees that are still far from unit scale.

    None when that layer is a normalization layer (it standardizes its input itself).
    """
    if any(consumer.kind.startswith(kind) for kind in NORMALIZATION_LAYERS):
        return None
    seen = columns(consumer.seen, consumer.kind.startswith("Conv"))[:MAX_ROWS].float().cpu().numpy()
    flagged = []
    for index in range(seen.shape[1]):
        column = StreamingColumn(str(index), "float")
        column.add(seen[:, index])
        if {f["flag"] for f in column.summary(limits).flags} & {"not_normalized", "integer_ids"}:
            flagged.append(index)
    return flagged


class InputsProbe(Probe):
    name = "inputs"
    description = "NaN/Inf and scale of every float input feature; integer ids against embedding sizes"
    phase = Phase.DATA
    requires = ()
    codes = (
        CodeDoc(
            "nonfinite_input",
            Stage.DATA,
            "a batch holds NaN or Inf",
            "NaN inputs make every downstream activation, loss and gradient NaN.",
            "A feature column with missing values that were never imputed.",
            "Impute or drop missing values in the data pipeline; assert torch.isfinite on batches.",
        ),
        CodeDoc(
            "index_out_of_range",
            Stage.DATA,
            "integer ids in a batch fall outside an embedding's num_embeddings (or below 0)",
            "On the CPU the forward raises IndexError; on CUDA a device-side assert kills the process.",
            "A tokenizer with 35,000 ids feeding nn.Embedding(32000, d).",
            "Set num_embeddings to max id + 1 (vocabulary size), or remap the ids.",
        ),
        CodeDoc(
            "unnormalized_input",
            Stage.INPUT_SCALE,
            "an input feature's scale is far from unit (raw times, counts, ids fed as floats)",
            "Large inputs give large activations and gradients; the first layer's weights "
            "see one feature and ignore the rest.",
            "Pulse times of 5,000-78,000 fed raw to a transformer.",
            "Standardize each feature with its mean and std (or log-transform heavy tails); "
            "embed integer ids instead of feeding them as floats.",
        ),
    )

    # raw inputs make the huge first-step gradients; a target's scale explains them, and the rate,
    # clip and plateau verdicts they produce, only when its control says so (measure/target_scale.py)
    folds = (
        Fold("unnormalized_input", "exploding_gradients", lambda cause, symptom: cause.severity != Severity.INFO),
        *(
            Fold("unnormalized_input", symptom, lambda cause, _: target_drives_gradient(cause))
            for symptom in (
                "exploding_gradients",
                "lr_too_low",
                "lr_too_high",
                "loss_plateau",
            )
        ),
        Fold("unnormalized_input", "grad_clip_too_aggressive", lambda cause, clip: clip_follows_target(cause, clip)),
    )
    settings = tuple(
        Setting(f"input_{f.name}", f.default, f"input/column flags: {meaning}")
        for f, meaning in zip(fields(FlagLimits), FLAG_MEANINGS)
    )

    def run(self, ctx: RunContext) -> ProbeResult:
        floats, ints = _gather(ctx.batches)
        findings, raw = [], {"features": {}, "integer_tensors": {}}
        embedding_findings, raw["integer_tensors"] = self._embedding_ranges(ctx, ints)
        findings += embedding_findings
        limits = flag_limits(ctx.settings)
        summaries = {
            path: feature_summaries(path, tensors, ctx.setup.feature_names, limits) for path, tensors in floats.items()
        }
        flagged_paths = [
            p
            for p, group in summaries.items()
            if any({f["flag"] for f in s.flags} & {"not_normalized", "integer_ids"} for s in group)
        ]
        consumers = first_consumers(ctx, 0, list(summaries)) if flagged_paths else {}
        nonfinite, unnormalized = [], []
        for path, group in summaries.items():
            role, kept = self._judge(path, group, consumers, limits, raw)
            for summary in group:
                raw["features"][summary.name] = dict(summary.to_dict(), role=role)
                if "nonfinite" in {f["flag"] for f in summary.flags}:
                    nonfinite.append(summary)
            unnormalized += [(path, role, s) for s in kept]
        if nonfinite:
            findings.append(self._nonfinite(nonfinite))
        for path in dict.fromkeys(p for p, _, _ in unnormalized):
            group = [(role, s) for p, role, s in unnormalized if p == path]
            finding = self._unnormalized(path, group, consumers.get(path) if consumers else None)
            if finding.evidence["role"] == "target":
                finding = _with_control(finding, standardized_target_control(ctx, path))
            findings.append(finding)
        return ProbeResult(findings, raw)

    @staticmethod
    def _judge(
        path: str, group: list[ColumnSummary], consumers: dict | None, limits: FlagLimits, raw: dict
    ) -> tuple[str, list[ColumnSummary]]:
        """The tensor's role and its features whose scale reaches a weight unnormalized."""
        flagged = [s for s in group if {f["flag"] for f in s.flags} & {"not_normalized", "integer_ids"}]
        if not flagged or consumers is None or not any(consumers.values()):
            return "input", flagged  # the forward raised, or no weight is reached by any tensor: judge raw
        consumer = consumers.get(path)
        if consumer is None:
            return "target", flagged  # reaches no weight, while other batch tensors do
        columns_left = still_flagged(consumer, limits)
        raw.setdefault("consumed_by", {})[path] = {
            "module": consumer.module,
            "type": consumer.kind,
            "still_flagged_columns": columns_left,
        }
        if not columns_left:
            return "input", []  # standardized in the model's own forward, or by a normalization layer
        if consumer.seen.shape[-1] == len(group) and not consumer.kind.startswith("Conv"):
            return "input", [s for i, s in enumerate(group) if i in columns_left and s in flagged]
        return "input", flagged

    @staticmethod
    def _nonfinite(summaries: list[ColumnSummary]) -> Finding:
        counts = {s.name: s.missing + s.posinf + s.neginf for s in summaries}
        worst = max(summaries, key=lambda s: counts[s.name])
        return Finding(
            "nonfinite_input",
            Severity.CRITICAL,
            f"the batches hold {sum(counts.values())} NaN/Inf value(s); {counts[worst.name]} in feature {worst.name!r}",
            Where(feature=worst.name),
            {
                "feature": worst.name,
                "nan": worst.missing,
                "inf": worst.posinf + worst.neginf,
                "values": worst.count + counts[worst.name],
                "all_features": counts,
            },
            Fix(
                advice=f"Impute or drop the missing values of {worst.name!r} in the data pipeline "
                "(and any other listed feature); assert torch.isfinite on batches while loading."
            ),
        )

    @staticmethod
    def _unnormalized(path: str, group: list[tuple[str, ColumnSummary]], consumer: Consumer | None) -> Finding:
        def scale(s: ColumnSummary) -> float:
            return max(abs(s.p1), abs(s.p99), s.std or 0.0)

        role, worst = max(group, key=lambda rs: scale(rs[1]) if scale(rs[1]) >= 1 else 1 / max(scale(rs[1]), 1e-30))
        big = scale(worst) >= 1e3
        features = {
            s.name: {"mean": s.mean, "std": s.std, "min": s.min, "max": s.max, "flags": [f["flag"] for f in s.flags]}
            for _, s in group
        }
        what = "target" if role == "target" else "input feature"
        ids = any(f["flag"] == "integer_ids" for f in worst.flags)
        advice = (
            f"Standardize: x = (x - mean) / std per feature, e.g. {worst.name}: mean {worst.mean:.6g}, "
            f"std {worst.std:.6g} (all flagged features and their numbers are in the evidence; "
            "`nandoctor feature-stats --emit-norm python` prints buffers to paste)."
        )
        if ids:
            advice = f"{worst.name!r} holds integer ids: feed them to an nn.Embedding instead of as a float. " + advice
        if role == "target":
            advice = "Standardize the regression target and un-scale predictions at inference. " + advice
        # a target's scale is worth knowing, but it is no input feature: the symptoms it causes
        # (huge gradients, a clip that always bites) are reported by the probes that see them
        severity = Severity.INFO if role == "target" else Severity.CRITICAL if big else Severity.WARNING
        return Finding(
            "unnormalized_input",
            severity,
            f"{what} {worst.name!r} is far from unit scale: mean {worst.mean:.4g}, std {worst.std:.4g}, "
            f"range [{worst.min:.4g}, {worst.max:.4g}]"
            + (f" (+{len(group) - 1} more in {path!r})" if len(group) > 1 else ""),
            Where(feature=worst.name),
            {
                "feature": worst.name,
                "tensor": path,
                "role": role,
                "mean": worst.mean,
                "std": worst.std,
                "min": worst.min,
                "max": worst.max,
                "p1": worst.p1,
                "p99": worst.p99,
                "reason": "; ".join(f["reason"] for f in worst.flags),
                "features": features,
                "first_consumed_by": consumer.module if consumer else None,
            },
            Fix(advice=advice),
        )

    @staticmethod
    def _embedding_ranges(ctx: RunContext, ints: dict[str, list[Any]]) -> tuple[list[Finding], dict]:
        """Ids beyond the rows of an embedding they actually reached (the traced pass's pre-hook).

        An integer tensor is never taken for an embedding's ids by its name or by a guess:
        class labels beside a small embedding are not its ids.
        """
        import torch

        ranges = {}
        if ints:
            bounds = torch.stack(
                [torch.stack([t.min() for t in ts]).min().cpu() for ts in ints.values()]
                + [torch.stack([t.max() for t in ts]).max().cpu() for ts in ints.values()]
            ).tolist()
            ranges = {path: (bounds[i], bounds[len(ints) + i]) for i, path in enumerate(ints)}
        findings = []
        for trace in traced(ctx):
            details = trace.crash.embedding if trace.crash is not None else None
            if not details:
                continue
            path, size, name = details.get("tensor"), details["num_embeddings"], details["module"]
            low, high = ranges.get(path, (details["min_id"], details["max_id"]))
            tensors = ints.get(path, [])
            bad = sum(int(((t < 0) | (t >= size)).sum()) for t in tensors) or details["out_of_range"]
            where = f"{path!r}" if path is not None else "ids computed in the forward"
            findings.append(
                Finding(
                    "index_out_of_range",
                    Severity.CRITICAL,
                    f"ids {low}..{high} in {where} reach embedding {name!r} with num_embeddings={size}",
                    Where(module=name, feature=path, batch=trace.batch_index),
                    {
                        "num_embeddings": size,
                        "min_id": low,
                        "max_id": high,
                        "out_of_range": bad,
                        "total": sum(t.numel() for t in tensors) or details["total"],
                        "tensor": path,
                    },
                    Fix(
                        advice=f"Make num_embeddings at least {high + 1} (the largest id + 1) or remap the "
                        "ids into the vocabulary; on CUDA this is a device-side assert."
                    ),
                )
            )
        return findings, {p: {"min": lo, "max": hi} for p, (lo, hi) in ranges.items()}
