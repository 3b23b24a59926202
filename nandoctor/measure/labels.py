"""Class targets checked against the loss that reads them, just before that loss runs.

A ``TorchFunctionMode`` sees every call of ``F.cross_entropy`` / ``F.nll_loss`` (the user's own
call, ``nn.CrossEntropyLoss``, a Hugging Face head's loss). ``loss_targets`` reads such a call,
positional or keyword, into its integer target, the class count the loss takes from its input
and its ``ignore_index``; both the traced pass and ``nandoctor scan`` judge labels through it, so
the two agree on what is out of range. The traced pass stops the forward with a
``LabelRangeError`` before the loss indexes with a bad label (on CUDA a device-side assert
would kill the process); the scan swaps bad labels for safe ones and counts them. Checking
costs one small read-back per loss call.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import cache
from typing import Any

from nandoctor.measure.hooks import UserFacing, ours
from nandoctor.measure.targets import check_loss_call, watch_loss_sign


class LabelRangeError(UserFacing):
    """Raised before a classification loss reads labels outside ``[0, classes)``."""

    def __init__(self, details: dict[str, Any]):
        super().__init__(
            f"labels {details['min_label']}..{details['max_label']} outside "
            f"[0, {details['classes']}) for {details['loss']}"
        )
        self.details = details


def class_count(logits: Any) -> int | None:
    """Classes of a cross-entropy input: dim 1 of (N, C, ...), dim 0 of an unbatched (C,)."""
    if logits.dim() == 0:
        return None
    return int(logits.shape[1] if logits.dim() > 1 else logits.shape[0])


@cache
def _loss_signatures() -> dict[Any, inspect.Signature]:
    from torch.nn import functional as F

    return {F.cross_entropy: inspect.signature(F.cross_entropy), F.nll_loss: inspect.signature(F.nll_loss)}


@dataclass
class LossTargets:
    """The integer targets of one classification-loss call, and what bounds them."""

    loss: str  # "cross_entropy" or "nll_loss"
    target: Any
    classes: int
    ignore_index: int
    call: inspect.BoundArguments

    def outside(self, labels: Any) -> Any:
        """True where a label is below 0 or at/above the class count, other than the ignore index."""
        return ((labels < 0) | (labels >= self.classes)) & (labels != self.ignore_index)

    def with_target(self, target: Any) -> tuple[tuple, dict]:
        """The call's (args, kwargs) with ``target`` in place of the labels."""
        self.call.arguments["target"] = target
        return self.call.args, self.call.kwargs


def loss_targets(func: Any, args: tuple, kwargs: dict) -> LossTargets | None:
    """The class targets of a ``cross_entropy`` / ``nll_loss`` call, or None when there are none to judge.

    Float targets (class probabilities, soft labels) have no range; a call that does not bind
    is left to the loss, which says what is wrong with it.
    """
    import torch

    signature = _loss_signatures().get(func)
    if signature is None:
        return None
    try:
        call = signature.bind(*args, **kwargs)
    except TypeError:
        return None
    logits, target = call.arguments.get("input"), call.arguments.get("target")
    if not isinstance(target, torch.Tensor) or target.is_floating_point() or target.dtype == torch.bool:
        return None
    if not isinstance(logits, torch.Tensor) or target.numel() == 0:
        return None
    classes = class_count(logits)
    if classes is None:
        return None
    return LossTargets(func.__name__, target, classes, call.arguments.get("ignore_index", -100), call)


def label_range_mode(
    batch_tensors: dict[int, tuple[str, Any]], records: list | None = None, watched: list | None = None
):
    """The mode that checks class targets; ``batch_tensors``: id -> (path, tensor) of the batch.

    With ``records``, every loss call's targets are also judged against the loss's domain and
    shape (measure/targets.py) and what is wrong is appended there; nothing is raised for it.
    Each loss call's output is then hooked into ``watched`` for the sign it enters the total with
    (``release_loss_hooks`` removes them when the pass ends).
    """
    watched = [] if watched is None else watched
    from torch.overrides import TorchFunctionMode

    class CheckClassTargets(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if records is not None:
                ours(check_loss_call)(func, args, kwargs, batch_tensors, records)
            targets = loss_targets(func, args, kwargs)
            if targets is not None:
                _raise_if_outside(targets, batch_tensors)
            output = func(*args, **kwargs)
            if records is not None:
                ours(watch_loss_sign)(func, output, watched)
            return output

    return CheckClassTargets()


def _raise_if_outside(targets: LossTargets, batch_tensors: dict) -> None:
    import torch

    target, classes, ignore = targets.target, targets.classes, targets.ignore_index
    with torch.no_grad():
        flat = target.detach().reshape(-1)
        bad = targets.outside(flat)
        count = bad.sum()
        first = torch.argmax(bad.to(torch.uint8))
        kept = flat[flat != ignore]
        low, high = torch.aminmax(kept) if kept.numel() else (flat.min(), flat.max())
        count, first, low, high = torch.stack([count, first, low.long(), high.long()]).tolist()
    if not count:
        return
    path, sample = _locate(target, first, batch_tensors)
    if path is None:  # shifted or copied inside the model (a causal LM's labels[..., 1:]): find the source
        path, sample = _holding(batch_tensors, targets, torch)
    raise LabelRangeError(
        {
            "loss": targets.loss,
            "classes": classes,
            "min_label": low,
            "max_label": high,
            "out_of_range": count,
            "total": int(target.numel()),
            "ignore_index": ignore,
            "tensor": path,
            "sample": sample,
        }
    )


def _holding(batch_tensors: dict, targets: LossTargets, torch: Any) -> tuple[str | None, int]:
    """The one integer batch tensor that holds out-of-range labels, and its first such sample."""
    found = []
    for path, tensor in batch_tensors.values():
        if tensor.is_floating_point() or tensor.dtype == torch.bool or not tensor.dim() or tensor.is_sparse:
            continue
        with torch.no_grad():
            bad = targets.outside(tensor)
            rows = bad.reshape(len(tensor), -1).any(1)
        if bool(rows.any()):
            found.append((path, int(torch.argmax(rows.to(torch.uint8)))))
    return found[0] if len(found) == 1 else (None, 0)


def _locate(target: Any, flat_index: int, batch_tensors: dict) -> tuple[str | None, int]:
    """The batch tensor the labels came from (itself, or a view of it) and the offender's sample."""
    found = batch_tensors.get(id(target))
    if found is None:  # labels.view(-1) in a Hugging Face head: match the batch tensor by storage
        found = next(
            (
                (p, t)
                for p, t in batch_tensors.values()
                if t.numel() == target.numel()
                and t.dim()
                and not t.is_floating_point()
                and t.untyped_storage().data_ptr() == target.untyped_storage().data_ptr()
            ),
            None,
        )
    shape = tuple(found[1].shape) if found is not None else tuple(target.shape)
    per_sample = 1
    for size in shape[1:]:
        per_sample *= size
    return (found[0] if found is not None else None), (flat_index // per_sample if shape else 0)
