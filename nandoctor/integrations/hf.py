"""Hugging Face ``transformers``: hand a ``Trainer`` over as a spec with one call.

    from nandoctor.integrations.hf import spec_from_trainer
    report = nandoctor.diagnose(spec_from_trainer(trainer))

The model needs no glue either way: a dict batch goes to ``model(**batch)`` and the output's
``loss`` is the loss (nandoctor.conventions).
"""

from __future__ import annotations

from typing import Any

from nandoctor.conventions import optimizer_like


def _optimizer_instance(trainer: Any) -> Any:
    """The optimizer ``trainer.train()`` would use, with its weight-decay groups; the Trainer is left as found."""
    if getattr(trainer, "optimizer", None) is not None:
        return trainer.optimizer
    try:
        return trainer.create_optimizer()
    finally:
        trainer.optimizer = None  # train() builds its own, as it would have


def spec_from_trainer(trainer: Any) -> dict[str, Any]:
    """A spec mapping from a ``transformers.Trainer``: its model, its train dataloader (with the
    Trainer's collator and batch size), and from ``TrainingArguments`` the learning rate,
    ``max_grad_norm``, ``fp16``/``bf16`` and the optimizer (class, betas, eps, weight decay
    groups). Fixes name the ``TrainingArguments`` fields (``learning_rate``, ``max_grad_norm``)."""
    args = trainer.args
    amp = "bf16" if getattr(args, "bf16", False) else "fp16" if getattr(args, "fp16", False) else None
    config = {
        "learning_rate": args.learning_rate,
        "max_grad_norm": args.max_grad_norm,
        "fp16": bool(getattr(args, "fp16", False)),
        "bf16": bool(getattr(args, "bf16", False)),
        "weight_decay": getattr(args, "weight_decay", 0.0),
    }
    return {
        "model": trainer.model,
        "data": trainer.get_train_dataloader(),
        "lr": args.learning_rate,
        "grad_clip": args.max_grad_norm or None,
        "amp": amp,
        "optimizer": optimizer_like(_optimizer_instance(trainer)),
        "config": config,
        "config_keys": {"lr": "learning_rate", "grad_clip": "max_grad_norm"},
    }


def __getattr__(name: str) -> Any:
    """``NanGuardCallback``: the guard as a Trainer callback, built on first use (nandoctor.guard.callbacks)."""
    if name == "NanGuardCallback":
        from nandoctor.guard.callbacks import hf_callback

        return hf_callback()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
