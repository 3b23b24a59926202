"""Lightning: a ``LightningModule`` is diagnosed as it is, with no glue.

    report = nandoctor.diagnose({"model": MyModule(), "data": MyDataModule(), "trainer": trainer})

``training_step(batch, batch_idx)`` is the loss (a returned mapping's ``"loss"``; its other keys
are metrics, never summed), the optimizer is rebuilt from ``configure_optimizers()`` for each
rate tried, a ``LightningDataModule`` is set up for fitting and its ``train_dataloader()`` read,
and a ``Trainer`` (or a mapping of its arguments) gives ``gradient_clip_val`` and ``precision``.
The conventions live in :mod:`nandoctor.conventions` (duck typing: lightning is never imported).
"""

from __future__ import annotations

from typing import Any


def spec_from_module(module: Any, data: Any = None, trainer: Any = None, **keys: Any) -> dict[str, Any]:
    """A spec mapping for ``nandoctor.diagnose``: ``data`` defaults to the module's own
    ``train_dataloader()``; ``keys`` are any other spec keys (``lr``, ``config``, ...)."""
    spec = {"model": module, "data": data, "trainer": trainer}
    spec.update(keys)
    return {key: value for key, value in spec.items() if value is not None}


def __getattr__(name: str) -> Any:
    """``NanGuardCallback``: the guard as a Trainer callback, built on first use (nandoctor.guard.callbacks)."""
    if name == "NanGuardCallback":
        from nandoctor.guard.callbacks import lightning_callback

        return lightning_callback()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
