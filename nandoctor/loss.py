"""Evaluate the user's loss exactly as docs/reference.md §1 describes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nandoctor.errors import UsageError


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
    """A scalar, a mapping of named scalars, or an object with a ``.loss`` attribute."""
    import torch

    if isinstance(output, torch.Tensor):
        return LossResult(_scalar(output, "the loss"), {})
    if isinstance(output, Mapping):
        if not output:
            raise UsageError("the loss returned an empty mapping")
        components = {str(k): _scalar(v, f"loss component {k!r}") for k, v in output.items()}
        total = sum(weights.get(name, 1.0) * value for name, value in components.items())
        return LossResult(total, components)
    if hasattr(output, "loss") and output.loss is not None:
        return interpret_loss(output.loss, weights)
    raise UsageError(f"the loss must be a scalar tensor, a mapping of them, or an object with "
                     f".loss; got {type(output).__name__}")


def compute_loss(setup: Any, model: Any, batch: Any) -> LossResult:
    output = setup.loss(model, batch) if setup.loss is not None else model(batch)
    return interpret_loss(output, setup.loss_weights)
