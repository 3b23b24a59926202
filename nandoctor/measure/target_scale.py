"""A control for a regression target far from unit scale: the same first step, target standardized.

A target's scale is no cause by itself (a model may un-scale its own output); it is the cause of
huge gradients, a rate that seems far too low, a clip that always bites or a plateau when the
gradient at the user's targets is much larger than at the same targets standardized. One forward
and backward on the first cached batch, one read-back; the model's gradients are left as found.
"""

from __future__ import annotations

from typing import Any

from nandoctor.batches import iter_tensors, map_tensors


def standardized_target_control(ctx: Any, path: str) -> dict[str, Any] | None:
    """``{"grad_norm", "grad_norm_standardized", "ratio"}`` for the target tensor at ``path``, or None
    when the loss cannot be computed on the changed batch."""
    import torch

    batch = ctx.batches[0]
    target = dict(iter_tensors(batch)).get(path)
    if target is None or not target.is_floating_point() or target.numel() < 2:
        return None
    with torch.no_grad():
        flat = target.float()
        scaled = ((flat - flat.mean()) / flat.std().clamp_min(1e-12)).to(target.dtype)
    changed = map_tensors(batch, lambda t: scaled if t is target else t)
    params = [p for p in ctx.model.parameters() if p.requires_grad]
    norms = []
    try:
        for candidate in (batch, changed):
            total = ctx.loss(candidate).total
            grads = [g for g in torch.autograd.grad(total, params, allow_unused=True) if g is not None]
            if not grads:
                return None
            norms.append(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).float())
    except Exception:  # the user's loss could not read the changed batch: no control, no claim
        return None
    raw, standardized = torch.stack(norms).tolist()
    ratio = raw / standardized if standardized > 0 else float("inf")
    return {"grad_norm": raw, "grad_norm_standardized": standardized, "ratio": ratio}
