"""Evaluate the user's loss exactly as docs/reference.md §1 describes (HF and Lightning outputs too)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nandoctor.conventions import call_model, has_loss_entry, loss_entry
from nandoctor.errors import UsageError, UserExit


@dataclass
class LossResult:
    """The training loss (``sum(w[k] * c[k])`` for components) and its named parts."""

    total: Any
    components: dict[str, Any]


def _scalar(value: Any, what: str):
    import torch

    if not isinstance(value, torch.Tensor):
        raise UsageError(f"{what} must be a tensor, got {type(value).__name__}")
    if value.numel() != 1:
        raise UsageError(f"{what} must be a scalar tensor, got shape {tuple(value.shape)}")
    return value.reshape(())


def interpret_loss(output: Any, weights: Mapping[str, float]) -> LossResult:
    """A scalar; an output with a ``loss`` (attribute or key: a ``ModelOutput``, Lightning's
    ``{"loss": ..., "acc": ...}``), which is the loss, its other entries never summed; or any
    other mapping of named scalar components."""
    import torch

    if isinstance(output, torch.Tensor):
        return LossResult(_scalar(output, "the loss"), {})
    if has_loss_entry(output):
        loss = loss_entry(output)
        if loss is None:
            raise UsageError(
                f"the model's {type(output).__name__} has no loss (its 'loss' is None): put the "
                "targets in the batch (Hugging Face models take 'labels') or give the spec a 'loss'"
            )
        return LossResult(_scalar(loss, "the output's 'loss'"), {})
    if isinstance(output, Mapping):
        if not output:
            raise UsageError("the loss returned an empty mapping")
        components = {str(k): _scalar(v, f"loss component {k!r}") for k, v in output.items()}
        total = sum(weights.get(name, 1.0) * value for name, value in components.items())
        return LossResult(total, components)
    if output is None:
        raise UsageError("the loss (or training_step) returned None; it must return the loss")
    raise UsageError(
        f"the loss must be a scalar tensor, a mapping of them, or an object with .loss; got {type(output).__name__}"
    )


def compute_loss(setup: Any, model: Any, batch: Any) -> LossResult:
    """The user's ``loss(model, batch)``, else the model called as its batch says (conventions)."""
    try:
        output = setup.loss(model, batch) if setup.loss is not None else call_model(model, batch)
    except SystemExit as exc:
        raise UserExit.of(exc, "the loss or the model's forward") from None
    return interpret_loss(output, setup.loss_weights)
