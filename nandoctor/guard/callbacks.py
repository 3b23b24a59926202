"""The guard as a Lightning ``Callback`` and a Hugging Face ``TrainerCallback``.

The classes are built on first use (``lightning_callback()``, ``hf_callback()``), so nothing
here imports lightning or transformers until a user asks for their callback;
``nandoctor.integrations.lightning.NanGuardCallback`` and ``nandoctor.integrations.hf.NanGuardCallback``
are these classes. Lightning hands the batch and the loss to its hooks; a Hugging Face ``Trainer``
does not, so a forward hook on the model (removed at the end of training) reads the batch
(``model(**inputs)``) and the output's ``loss``.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import ExitStack
from functools import lru_cache
from typing import Any

from nandoctor.guard.guard import Guard


def _loss_of(output: Any) -> Any:
    """A step's loss from what the framework hands back: a tensor, ``{"loss": ...}`` or ``.loss``."""
    if isinstance(output, Mapping):
        return output.get("loss")
    return getattr(output, "loss", output)


def _mean_loss(losses: list[Any]) -> Any:
    """The step's loss: the mean of its micro-batches' (one sum on the device, no read-back)."""
    import torch

    tensors = [loss.detach().float().reshape(-1)[:1].sum() for loss in losses if isinstance(loss, torch.Tensor)]
    if tensors:
        return torch.stack(tensors).mean()
    return next((loss for loss in losses if loss is not None), None)


def _lightning_base() -> type:
    try:
        from lightning.pytorch import Callback
    except ImportError:
        from pytorch_lightning import Callback
    return Callback


@lru_cache(maxsize=1)
def lightning_callback() -> type:
    """``NanGuardCallback`` for ``lightning.pytorch`` (or ``pytorch_lightning``) ``Trainer``."""

    class NanGuardCallback(_lightning_base()):
        """Guard ``Trainer.fit``: a capture on the first NaN/Inf loss or gradient, or loss spike.

        Takes :class:`nandoctor.Guard`'s options (``path``, ``check_every``, ``on_failure``, ``spec``...).
        """

        def __init__(self, path: str = "nandoctor_capture.pt", **guard_options: Any):
            super().__init__()
            self.options = dict(path=path, **guard_options)
            self.guard: Guard | None = None
            self.losses: list[Any] = []  # the micro-batches' losses of the step under way
            self.stepped = False

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            optimizer = trainer.optimizers[0] if trainer.optimizers else None
            scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
            self.guard = Guard(pl_module, optimizer, scaler=scaler, **self.options)

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if self.guard is not None:
                self.guard.begin(batch)

        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            if self.guard is not None:
                self.guard.gradients()
                self.stepped = True

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            """A step ends with the optimizer's step: with gradient accumulation, after its last micro-batch."""
            if self.guard is None:
                return
            self.losses.append(_loss_of(outputs))
            every = max(1, int(getattr(trainer, "accumulate_grad_batches", 1) or 1))
            if self.stepped or len(self.losses) >= every:
                losses, self.losses, self.stepped = self.losses, [], False
                self.guard.end(_mean_loss(losses))

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            if self.guard is not None:
                self.guard.close()

        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            if self.guard is not None:
                self.guard._remove_hooks()

    return NanGuardCallback


@lru_cache(maxsize=1)
def hf_callback() -> type:
    """``NanGuardCallback`` for a ``transformers`` ``Trainer``."""
    from transformers import TrainerCallback

    class NanGuardCallback(TrainerCallback):
        """Guard ``Trainer.train``: a capture on the first NaN/Inf loss or gradient, or loss spike.

        Takes :class:`nandoctor.Guard`'s options (``path``, ``check_every``, ``on_failure``, ``spec``...).
        With gradient accumulation the capture holds every micro-batch of each step.
        """

        def __init__(self, path: str = "nandoctor_capture.pt", **guard_options: Any):
            self.options = dict(path=path, **guard_options)
            self.guard: Guard | None = None
            self.hooks = ExitStack()
            self.losses: list[Any] = []  # the micro-batches' losses of the step under way

        def on_train_begin(
            self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None, **kwargs: Any
        ) -> None:
            self.guard = Guard(model, optimizer, **self.options)
            self.hooks.enter_context(model.register_forward_pre_hook(self._before_forward, with_kwargs=True))
            self.hooks.enter_context(model.register_forward_hook(self._after_forward))

        def _before_forward(self, module: Any, args: tuple, kwargs: dict) -> None:
            if module.training and self.guard is not None:  # each micro-batch of an accumulated step
                self.guard.begin(dict(kwargs) if kwargs else args)

        def _after_forward(self, module: Any, args: tuple, output: Any) -> None:
            if module.training:
                self.losses.append(_loss_of(output))

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.guard is not None:
                self.guard.gradients()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.guard is not None:
                losses, self.losses = self.losses, []
                try:
                    self.guard.end(_mean_loss(losses))
                except BaseException:
                    self.hooks.close()
                    raise

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.hooks.close()
            if self.guard is not None:
                self.guard.close()

    return NanGuardCallback
