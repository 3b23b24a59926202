"""How Hugging Face and Lightning code is called, by duck typing (docs/reference.md §1).

Hugging Face: a dict batch goes to ``model(**batch)`` when the forward takes those names, and
an output's ``loss`` is the loss. Lightning: a LightningModule's ``training_step`` gives the
loss and its ``configure_optimizers()`` the optimizer, a LightningDataModule's
``train_dataloader()`` the data, a Trainer's ``gradient_clip_val`` and ``precision`` the
clipping and precision. Neither ``transformers`` nor ``lightning`` is imported here: nandoctor's
core runs without them, and a user's setup is recognised by what it has, not by its class.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from typing import Any, Iterator

_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
# keys LR schedulers add to a param group when they are built: not optimizer settings
_SCHEDULER_KEYS = ("initial_lr", "max_lr", "min_lr", "base_momentum", "max_momentum", "swa_lr")


# --------------------------------------------------------------------------- Hugging Face


def takes_batch_keywords(model: Any, batch: Any) -> bool:
    """A dict batch whose keys the forward accepts by name (``input_ids=``, ``labels=``)."""
    if not isinstance(batch, Mapping) or not batch or not all(isinstance(k, str) for k in batch):
        return False
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError, AttributeError):
        return False
    named = {p.name for p in signature.parameters.values() if p.kind in _NAMED}
    any_keyword = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    if not (set(batch) & named or (any_keyword and not named)):
        return False
    try:
        signature.bind(**batch)
    except TypeError:
        return False
    return True


def call_model(model: Any, batch: Any) -> Any:
    """The model's output for a batch when the spec has no ``loss``."""
    return model(**batch) if takes_batch_keywords(model, batch) else model(batch)


_MISSING = object()


def loss_entry(output: Any) -> Any:
    """An output's ``loss`` (attribute or key, as ``ModelOutput`` has), ``None``, or ``_MISSING``."""
    value = getattr(output, "loss", _MISSING)
    if value is _MISSING and isinstance(output, Mapping) and "loss" in output:
        value = output["loss"]
    return value


def has_loss_entry(output: Any) -> bool:
    return loss_entry(output) is not _MISSING


# ------------------------------------------------------------------------------ Lightning


def is_lightning_module(model: Any) -> bool:
    return callable(getattr(model, "training_step", None)) and callable(getattr(model, "configure_optimizers", None))


def is_datamodule(data: Any) -> bool:
    """A LightningDataModule (or alike): it makes loaders but is not itself an iterable of batches."""
    return callable(getattr(data, "train_dataloader", None)) and not isinstance(data, Iterable)


@contextmanager
def quiet_lightning_logging() -> Iterator[None]:
    """``self.log`` outside a Trainer warns that no trainer is attached: expected here, so silent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*self\.log(_dict)?\(\)")
        warnings.filterwarnings("ignore", message=r".*`self\.trainer` reference is not registered")
        yield


def _positional_count(function: Callable) -> int:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return 2
    if any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return 2
    return sum(
        p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in parameters
    )


def training_step_loss(model: Any, batch: Any, batch_index: int = 0) -> Any:
    """The ``loss`` callable of a LightningModule: its ``training_step(batch, batch_index)``.

    With manual optimization (``automatic_optimization = False``) the step asks for its optimizers
    and calls ``manual_backward`` itself: it gets stand-ins that step nothing, and each loss it hands
    to ``manual_backward`` is a named component (``manual_backward[0]``...): nandoctor does the
    backward and the step. A single one is the loss.
    """
    with quiet_lightning_logging(), _manual_optimization(model) as handed:
        if _positional_count(model.training_step) >= 2:
            returned = model.training_step(batch, batch_index)
        else:
            returned = model.training_step(batch)
    if not handed:
        return returned
    return handed[0] if len(handed) == 1 else {f"manual_backward[{i}]": loss for i, loss in enumerate(handed)}


class _StandInOptimizer:
    """What ``self.optimizers()`` returns during nandoctor's passes: the user's param groups, no step."""

    def __init__(self, optimizer: Any):
        self.optimizer = optimizer
        self.param_groups = optimizer.param_groups if optimizer is not None else []

    def step(self, closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        return closure() if closure is not None else None  # a closure computes (and hands over) its loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass


@contextmanager
def _manual_optimization(model: Any) -> Iterator[list[Any]]:
    """Stand in for the trainer a manual-optimization step talks to, on the instance, removed after."""
    handed: list[Any] = []
    if getattr(model, "automatic_optimization", True) is not False:
        yield handed
        return
    configured = model.configure_optimizers()
    optimizers = [_StandInOptimizer(o) for o in all_optimizers(configured)] or [_StandInOptimizer(None)]
    trainable = {p: p.requires_grad for p in model.parameters()}

    def toggle(optimizer: Any) -> None:
        """As Lightning does: only this optimizer's parameters take gradients from the losses that follow."""
        mine = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for parameter, wanted in trainable.items():
            parameter.requires_grad_(wanted and id(parameter) in mine)

    def untoggle(optimizer: Any = None) -> None:
        for parameter, wanted in trainable.items():
            parameter.requires_grad_(wanted)

    stand_ins = {
        "optimizers": lambda use_pl_optimizer=True: optimizers[0] if len(optimizers) == 1 else optimizers,
        "manual_backward": lambda loss, *args, **kwargs: handed.append(loss),
        "toggle_optimizer": toggle,
        "untoggle_optimizer": untoggle,
    }
    shadowed = {name: model.__dict__[name] for name in stand_ins if name in model.__dict__}
    for name, function in stand_ins.items():
        object.__setattr__(model, name, function)
    try:
        yield handed
    finally:
        untoggle()
        for name in stand_ins:
            model.__dict__.pop(name, None)
        for name, value in shadowed.items():
            object.__setattr__(model, name, value)


def plays_a_game(model: Any) -> bool:
    """A manual-optimization LightningModule with several optimizers (a GAN): its losses are players
    of a game, so no summed loss has to fall and a learning-rate sweep cannot judge its rate."""
    if not is_lightning_module(model) or getattr(model, "automatic_optimization", True) is not False:
        return False
    return len(all_optimizers(model.configure_optimizers())) > 1


def all_optimizers(returned: Any) -> list[Any]:
    """Every optimizer in what ``configure_optimizers()`` returned, in order (see :func:`first_optimizer`)."""
    import torch

    if isinstance(returned, torch.optim.Optimizer):
        return [returned]
    if isinstance(returned, Mapping):
        return all_optimizers(returned.get("optimizer"))
    if isinstance(returned, (list, tuple)):
        return [found for item in returned for found in all_optimizers(item)]
    return []


def first_optimizer(returned: Any) -> Any:
    """The optimizer in what ``configure_optimizers()`` returned: an optimizer, a list or tuple
    of them (or of ``([optimizers], [schedulers])``), a dict with ``"optimizer"``, a list of dicts."""
    found = all_optimizers(returned)
    return found[0] if found else None


def group_rate(group: Mapping[str, Any]) -> float:
    """A param group's rate as the user set it: a cyclic schedule's peak (``max_lr``), else the
    rate before a scheduler (warm-up) scaled it (``initial_lr``), else ``lr``."""
    return float(group.get("max_lr", group.get("initial_lr", group["lr"])))


def optimizer_like(instance: Any, *more: Any) -> Callable[[Any, float], Any]:
    """``factory(params, lr)`` that builds ``instance``'s class with its param groups and
    settings (weight decay per group, betas, momentum...), the rate replaced by ``lr``.

    Groups with different rates keep their ratios to the first group's rate. ``more`` optimizers
    (a GAN's discriminator's) add their groups: one optimizer steps every parameter.
    """
    cls = type(instance)
    groups = [dict(group) for optimizer in (instance, *more) for group in optimizer.param_groups]
    base = group_rate(groups[0]) if groups else 0.0

    def factory(params: Any, lr: float) -> Any:
        wanted = {id(p) for p in params}
        new_groups = []
        for group in groups:
            kept = [p for p in group["params"] if id(p) in wanted]
            if not kept:
                continue
            settings = {k: v for k, v in group.items() if k != "params" and k not in _SCHEDULER_KEYS}
            scale = group_rate(group) / base if base > 0 else 1.0
            new_groups.append(dict(settings, params=kept, lr=lr * scale))
        if not new_groups:  # other parameter objects than the instance's: its first group's settings
            settings = {k: v for k, v in groups[0].items() if k != "params" and k not in _SCHEDULER_KEYS}
            new_groups = [dict(settings, params=list(params), lr=lr)]
        try:
            return cls(new_groups, lr=lr)
        except TypeError:  # an optimizer without an ``lr`` argument: the groups carry it
            return cls(new_groups)

    factory.__name__ = cls.__name__
    factory.__qualname__ = cls.__qualname__
    return factory


def datamodule_loader(datamodule: Any) -> Any:
    """Set a LightningDataModule up for fitting, as a Trainer would, and read its train loader."""
    if callable(getattr(datamodule, "prepare_data", None)):
        datamodule.prepare_data()
    setup = getattr(datamodule, "setup", None)
    if callable(setup):
        parameters = inspect.signature(setup).parameters
        if "stage" in parameters:
            setup(stage="fit")
        elif parameters:
            setup("fit")
        else:
            setup()
    return datamodule.train_dataloader()


_PRECISION = {
    "16-mixed": "fp16",
    "16": "fp16",
    "fp16": "fp16",
    "16-mixed-precision": "fp16",
    "bf16-mixed": "bf16",
    "bf16": "bf16",
}


def trainer_settings(trainer: Any) -> tuple[float | None, str | None]:
    """(grad clip max-norm, amp) from a Lightning Trainer or a mapping of its arguments.

    A Hugging Face Trainer works too (``args.max_grad_norm``, ``args.fp16``/``bf16``).
    """
    args = getattr(trainer, "args", None)
    if args is not None and hasattr(args, "max_grad_norm"):
        amp = "bf16" if getattr(args, "bf16", False) else "fp16" if getattr(args, "fp16", False) else None
        return (args.max_grad_norm or None), amp

    def get(key: str) -> Any:
        return trainer.get(key) if isinstance(trainer, Mapping) else getattr(trainer, key, None)

    clip = get("gradient_clip_val")
    algorithm = str(get("gradient_clip_algorithm") or "norm").lower()
    clip = float(clip) if clip and algorithm.endswith("norm") else None  # clipping by value is not a norm
    precision = get("precision")
    return clip, _PRECISION.get(str(precision).lower()) if precision is not None else None
