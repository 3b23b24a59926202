"""Class targets checked against the loss that reads them, just before that loss runs.

A ``TorchFunctionMode`` sees every call of ``F.cross_entropy`` / ``F.nll_loss`` (the user's own
call, ``nn.CrossEntropyLoss``, a Hugging Face head's loss): it compares the integer target with
the class count the loss takes from its input, and stops the forward with a
``LabelRangeError`` before the loss indexes with a bad label (on CUDA a device-side assert
would kill the process). Checking costs one small read-back per loss call.
"""

from __future__ import annotations

from typing import Any

from nandoctor.measure.hooks import UserFacing

_IGNORE_POSITION = {"cross_entropy": 4, "nll_loss": 4}  # (input, target, weight, size_average, ignore_index)


class LabelRangeError(UserFacing):
    """Raised before a classification loss reads labels outside ``[0, classes)``."""

    def __init__(self, details: dict[str, Any]):
        super().__init__(f"labels {details['min_label']}..{details['max_label']} outside "
                         f"[0, {details['classes']}) for {details['loss']}")
        self.details = details


def may_hold_labels(batch_tensors: dict[int, tuple[str, Any]]) -> bool:
    """Class labels come in as integer tensors: without one, the check costs nothing."""
    import torch

    return any(not t.is_floating_point() and t.dtype not in (torch.bool, torch.complex64, torch.complex128)
               for _, t in batch_tensors.values())


def class_count(logits: Any) -> int | None:
    """Classes of a cross-entropy input: dim 1 of (N, C, ...), dim 0 of an unbatched (C,)."""
    if logits.dim() == 0:
        return None
    return int(logits.shape[1] if logits.dim() > 1 else logits.shape[0])


def label_range_mode(batch_tensors: dict[int, tuple[str, Any]]):
    """The mode that checks class targets; ``batch_tensors``: id -> (path, tensor) of the batch."""
    import torch
    from torch.nn import functional as F
    from torch.overrides import TorchFunctionMode

    losses = {F.cross_entropy: "cross_entropy", F.nll_loss: "nll_loss"}

    class CheckClassTargets(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = losses.get(func)
            if name is not None and len(args) >= 2:
                _check(name, args, kwargs, batch_tensors, torch)
            return func(*args, **kwargs)

    return CheckClassTargets()


def _check(name: str, args: tuple, kwargs: dict, batch_tensors: dict, torch: Any) -> None:
    logits, target = args[0], args[1]
    if not isinstance(target, torch.Tensor) or target.is_floating_point() or target.dtype == torch.bool:
        return  # class probabilities (soft labels) have no range to check
    if not isinstance(logits, torch.Tensor) or target.numel() == 0:
        return
    classes = class_count(logits)
    if classes is None:
        return
    position = _IGNORE_POSITION[name]
    ignore = kwargs.get("ignore_index", args[position] if len(args) > position else -100)
    with torch.no_grad():
        flat = target.detach().reshape(-1)
        bad = ((flat < 0) | (flat >= classes)) & (flat != ignore)
        count = bad.sum()
        first = torch.argmax(bad.to(torch.uint8))
        kept = flat[flat != ignore]
        low, high = (torch.aminmax(kept) if kept.numel() else (flat.min(), flat.max()))
        count, first, low, high = torch.stack([count, first, low.long(), high.long()]).tolist()
    if not count:
        return
    path, sample = _locate(target, first, batch_tensors)
    if path is None:  # shifted or copied inside the model (a causal LM's labels[..., 1:]): find the source
        path, sample = _holding(batch_tensors, classes, ignore, torch)
    raise LabelRangeError({"loss": name, "classes": classes, "min_label": low, "max_label": high,
                           "out_of_range": count, "total": int(target.numel()), "ignore_index": ignore,
                           "tensor": path, "sample": sample})


def _holding(batch_tensors: dict, classes: int, ignore: int, torch: Any) -> tuple[str | None, int]:
    """The one integer batch tensor that holds out-of-range labels, and its first such sample."""
    found = []
    for path, tensor in batch_tensors.values():
        if tensor.is_floating_point() or tensor.dtype == torch.bool or not tensor.dim() or tensor.is_sparse:
            continue
        with torch.no_grad():
            bad = ((tensor < 0) | (tensor >= classes)) & (tensor != ignore)
            rows = bad.reshape(len(tensor), -1).any(1)
        if bool(rows.any()):
            found.append((path, int(torch.argmax(rows.to(torch.uint8)))))
    return found[0] if len(found) == 1 else (None, 0)


def _locate(target: Any, flat_index: int, batch_tensors: dict) -> tuple[str | None, int]:
    """The batch tensor the labels came from (itself, or a view of it) and the offender's sample."""
    found = batch_tensors.get(id(target))
    if found is None:  # labels.view(-1) in a Hugging Face head: match the batch tensor by storage
        found = next(((p, t) for p, t in batch_tensors.values()
                      if t.numel() == target.numel() and t.dim() and not t.is_floating_point()
                      and t.untyped_storage().data_ptr() == target.untyped_storage().data_ptr()), None)
    shape = tuple(found[1].shape) if found is not None else tuple(target.shape)
    per_sample = 1
    for size in shape[1:]:
        per_sample *= size
    return (found[0] if found is not None else None), (flat_index // per_sample if shape else 0)
