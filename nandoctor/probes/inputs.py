"""The cached batches themselves: NaN/Inf values, named per feature."""

from __future__ import annotations

from typing import Any

from nandoctor.batches import iter_tensors
from nandoctor.findings import Finding, Fix, Severity, Where
from nandoctor.probes.base import ProbeResult


def feature_names_for(path: str, width: int, feature_names: Any) -> list[str] | None:
    """The spec's names for the last dimension of the tensor at ``path`` (CONTRACT.md §1).

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


def feature_label(path: str, index: int, names: list[str] | None) -> str:
    return names[index] if names else f"{path}[{index}]"


class InputsProbe:
    name = "inputs"
    description = "NaN/Inf in the float tensors of the cached batches, per feature"
    order = 5
    requires: tuple[str, ...] = ()

    def run(self, ctx: Any) -> ProbeResult:
        import torch

        counts: dict[str, int] = {}
        first_batch: dict[str, int] = {}
        for batch_index, batch in enumerate(ctx.batches):
            for path, tensor in iter_tensors(batch):
                if not tensor.is_floating_point() or tensor.numel() == 0:
                    continue
                flat = tensor.detach().reshape(-1, tensor.shape[-1]) if tensor.dim() else tensor.reshape(1, 1)
                per_feature = (~torch.isfinite(flat)).sum(0).tolist()
                names = feature_names_for(path, flat.shape[-1], ctx.setup.feature_names)
                for index, count in enumerate(per_feature):
                    if count:
                        label = feature_label(path, index, names) if tensor.dim() > 0 else path
                        counts[label] = counts.get(label, 0) + int(count)
                        first_batch.setdefault(label, batch_index)
        raw = {"nonfinite": counts}
        if not counts:
            return ProbeResult([], raw)
        feature = max(counts, key=lambda k: (counts[k], k))
        finding = Finding(
            "nonfinite_input", Severity.CRITICAL,
            f"the batches hold {sum(counts.values())} NaN/Inf value(s); most in feature {feature!r}",
            Where(feature=feature),
            {"feature": feature, "count": counts[feature], "first_batch": first_batch[feature],
             "all_features": counts},
            Fix(advice=f"Impute or drop the missing values of {feature!r} in the data pipeline "
                       "(and any other listed feature); assert torch.isfinite on batches while loading."))
        return ProbeResult([finding], raw)
