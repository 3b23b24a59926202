"""Device-side statistics of tensors (no synchronisation), and one call's NaN count by a re-run.

The traced pass keeps only these small statistics, never the module outputs themselves; when an
output turned out non-finite, the forward is run again to count its NaN/Inf values.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from nandoctor.batches import iter_tensors
from nandoctor.errors import InternalError, UsageError
from nandoctor.measure.hooks import ours


def float_tensors(obj: Any) -> list[Any]:
    return [t for _, t in iter_tensors(obj) if t.is_floating_point() and t.numel() > 0]


def sparse_values(tensor: Any) -> Any:
    """A sparse tensor's stored values, plus one implicit zero when some entries are not stored."""
    import torch

    values = tensor.coalesce().values() if tensor.layout == torch.sparse_coo else tensor.values()
    if values.numel() < tensor.numel():
        values = torch.cat([values.reshape(-1), values.new_zeros(1)])
    return values


def range_stats(tensors: list[Any]):
    """``[min, max, l2 norm]`` over the tensors, as one tensor on their device (no sync).

    float32, or float64 when a tensor is float64 (a double model's range must not overflow).
    """
    import torch

    with torch.no_grad():
        rows = []
        for tensor in tensors:
            tensor = tensor.detach()
            if tensor.layout != torch.strided:
                tensor = sparse_values(tensor)
            dtype = torch.promote_types(tensor.dtype, torch.float32)
            low, high = torch.aminmax(tensor)
            norm = torch.linalg.vector_norm(tensor, dtype=dtype)
            rows.append(torch.stack([low.to(dtype), high.to(dtype), norm]))
        if len(rows) == 1:
            return rows[0]
        dtype = torch.float64 if any(r.dtype == torch.float64 for r in rows) else torch.float32
        stacked = torch.stack([r.to(rows[0].device, dtype) for r in rows])
        return torch.stack([stacked[:, 0].min(), stacked[:, 1].max(), stacked[:, 2].norm()])


def rng_state(batch: Any) -> tuple[Any, Any]:
    """The CPU and the batch's CUDA generator states: a re-run draws the same dropout masks."""
    import torch

    devices = {t.device for _, t in iter_tensors(batch) if t.device.type == "cuda"}
    cuda = {d: torch.cuda.get_rng_state(d) for d in devices}
    return torch.random.get_rng_state(), cuda


def count_nonfinite(ctx: Any, batch_index: int, call_index: int, rng: tuple[Any, Any]) -> dict[str, int] | None:
    """NaN/+Inf/-Inf counts of one call's outputs, by re-running the forward without gradients.

    Only a failing pass pays for this; holding every output until read-back would raise the
    traced pass's peak memory on every healthy model.
    """
    import torch

    calls: list[int] = []
    counts: list[Any] = []

    @ours
    def count(module: Any, args: Any, output: Any) -> None:
        if len(calls) == call_index:
            outputs = [t.detach() for t in float_tensors(output)]
            outputs = [sparse_values(t) if t.layout != torch.strided else t for t in outputs]
            counts.extend(
                torch.stack(
                    [
                        torch.isnan(t).sum(),
                        torch.isposinf(t).sum(),
                        torch.isneginf(t).sum(),
                        torch.tensor(t.numel(), device=t.device),
                    ]
                )
                for t in outputs
            )
        calls.append(1)

    torch.random.set_rng_state(rng[0])
    for device, state in rng[1].items():
        torch.cuda.set_rng_state(state, device)
    with ExitStack() as handles, torch.no_grad():
        for module in ctx.model.modules():
            handles.enter_context(module.register_forward_hook(count))
        try:
            ctx.loss(ctx.batches[batch_index])
        except (UsageError, InternalError):
            raise
        except Exception:  # not reproducible: the counts are left out
            return None
    if not counts:
        return None
    nan, posinf, neginf, numel = (int(v) for v in torch.stack([c.to(counts[0].device) for c in counts]).sum(0).tolist())
    return {"nan": nan, "posinf": posinf, "neginf": neginf, "numel": numel} if nan + posinf + neginf else None
