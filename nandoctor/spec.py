"""Load a user's training setup from a build SPEC (docs/reference.md §1).

SPEC is ``path/to/file.py:function`` or ``package.module:function``; ``load`` builds the setup
for the CLI, the Python API and ``nandoctor replay``. Every way it can be wrong raises
:class:`UsageError` with one line that says what to change.
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

from nandoctor.distributed import FSDP2, ddp_find_unused, plain_module, plain_replica, sharded
from nandoctor.errors import UsageError, describe
from nandoctor.overrides import Overrides, parse_overrides, parse_value  # noqa: F401 (re-exported)
from nandoctor.user_code import _is_file_target, _user_frame, call_build, resolve_function, split_spec  # noqa: F401

AMP_CHOICES = (None, "fp16", "bf16")
_SETUP_KEYS = (
    "model",
    "data",
    "loss",
    "loss_weights",
    "optimizer",
    "lr",
    "grad_clip",
    "amp",
    "feature_names",
    "config",
    "config_keys",
    "device",
    "trainer",
)

#: What ``load`` takes: a SPEC string (``"model.py:build"``), a build function or what one returns
#: (a mapping or an object); ``Overrides``: its keyword arguments, a mapping or ``--set`` pairs.
SpecLike = Union[str, Mapping[str, Any], Callable[..., Any], Any]


@dataclass
class Setup:
    """What the build function returned, validated and with defaults filled in."""

    model: Any
    data: Iterable
    loss: Callable | None = None
    loss_weights: dict[str, float] = field(default_factory=dict)
    optimizer: Callable | None = None
    lr: float = 1e-3
    grad_clip: float | None = None
    amp: str | None = None
    feature_names: Any = None
    config: dict | None = None
    config_keys: dict[str, str] = field(default_factory=dict)
    device: Any = None
    wrappers: tuple[str, ...] = ()  # taken off: DDP, torch.compile, FSDP2 (nandoctor probes the module inside)
    ddp_find_unused: bool | None = None  # DDP's find_unused_parameters; None when the model is not in DDP
    ddp_model: Any = None  # the DistributedDataParallel wrapper itself: one step through it shows what it syncs


def _as_mapping(result: Any, spec: str) -> dict[str, Any]:
    if isinstance(result, Mapping):
        return dict(result)
    if hasattr(result, "model") and hasattr(result, "data"):
        return {key: getattr(result, key) for key in _SETUP_KEYS if hasattr(result, key)}
    raise UsageError(
        f"{spec} returned {type(result).__name__}; expected a dict (or an object) with at least 'model' and 'data'"
    )


# names people use for the contract's keys (§1): a misspelt key is ignored, so say so
_KEY_ALIASES = {
    "learning_rate": "lr",
    "lr_rate": "lr",
    "max_norm": "grad_clip",
    "clip": "grad_clip",
    "gradient_clip_val": "grad_clip",
    "clip_grad_norm": "grad_clip",
    "precision": "amp",
    "mixed_precision": "amp",
    "dataloader": "data",
    "loader": "data",
    "train_loader": "data",
    "train_dataloader": "data",
    "dataset": "data",
    "criterion": "loss",
    "loss_fn": "loss",
    "optim": "optimizer",
    "opt": "optimizer",
    "net": "model",
    "network": "model",
    "features": "feature_names",
    "columns": "feature_names",
    "weights": "loss_weights",
}


def warn_unknown_keys(mapping: Mapping, spec: str) -> None:
    """A key nandoctor does not read is ignored: warn on stderr, naming the nearest known key."""
    import difflib

    candidates = list(_SETUP_KEYS) + list(_KEY_ALIASES)
    for key in mapping:
        if not isinstance(key, str) or key in _SETUP_KEYS:
            continue
        close = difflib.get_close_matches(key.lower(), candidates, n=1, cutoff=0.75)
        hint = f" (did you mean {_KEY_ALIASES.get(close[0], close[0])!r}?)" if close else ""
        print(
            f"nandoctor: warning: {spec} returned the key {key!r}, which nandoctor does not read; it is ignored{hint}",
            file=sys.stderr,
            flush=True,
        )


def _feature_names(value: Any, spec: str) -> Any:
    """``feature_names`` as a list of str, or a mapping of batch key / position to one (§1)."""
    import torch

    def names(entry: Any, what: str) -> list[str]:
        if isinstance(entry, (str, bytes, Mapping, torch.Tensor)) or not isinstance(entry, Iterable):
            raise UsageError(f"{spec}: {what} must be a list of names, got {type(entry).__name__}")
        listed = list(entry)  # a tuple, a pandas Index, a numpy array of strings
        if not listed or not all(isinstance(n, (str, int)) and not isinstance(n, bool) for n in listed):
            raise UsageError(f"{spec}: {what} must be a non-empty list of names (strings), got {listed[:5]!r}")
        return [str(n) for n in listed]

    if value is None:
        return None
    if isinstance(value, Mapping):
        return {key: names(entry, f"'feature_names'[{key!r}]") for key, entry in value.items()}
    return names(value, "'feature_names'")


RATE_RANGE = (1e-20, 1e10)  # a learning rate outside it is a typo, and the sweep's grid around it would overflow


def _number(value: Any, key: str, spec: str, allow_none: bool) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise UsageError(f"{spec}: '{key}' must be a finite positive number, got {value!r}")
    if key == "lr" and not RATE_RANGE[0] <= value <= RATE_RANGE[1]:
        raise UsageError(f"{spec}: 'lr' must be between {RATE_RANGE[0]:g} and {RATE_RANGE[1]:g}, got {value!r}")
    return float(value)


def _users_call(function: Callable, what: str, spec: str) -> Any:
    """Call the user's code while reading the spec; what it raises is a usage error."""
    try:
        return function()
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"{spec}: {what} raised {describe(exc)} (at {_user_frame(exc, None)})") from exc


def apply_conventions(mapping: dict[str, Any], spec: str) -> dict[str, Any]:
    """Fill what a LightningModule, a LightningDataModule or a ``trainer`` already say.

    The loss is ``training_step``; the optimizer is rebuilt from ``configure_optimizers()``
    (its rate is the user's when the spec has no ``lr``); a data module is set up for fitting
    and its ``train_dataloader()`` read; a trainer's clipping and precision fill ``grad_clip``
    and ``amp`` where those are absent. What the spec says itself always wins.
    """
    from nandoctor import conventions

    model = mapping.get("model")
    lightning = conventions.is_lightning_module(model)
    if mapping.get("data") is None and lightning and callable(getattr(model, "train_dataloader", None)):
        mapping["data"] = _users_call(model.train_dataloader, "the LightningModule's train_dataloader()", spec)
    if conventions.is_datamodule(mapping.get("data")):
        data_module = mapping["data"]
        mapping["data"] = _users_call(
            lambda: conventions.datamodule_loader(data_module), f"setting up the {type(data_module).__name__}", spec
        )
    if lightning and mapping.get("loss") is None:
        mapping["loss"] = conventions.training_step_loss
    if lightning and mapping.get("optimizer") is None:
        returned = _users_call(model.configure_optimizers, f"{type(model).__name__}.configure_optimizers()", spec)
        instance = conventions.first_optimizer(returned)
        if instance is None:
            raise UsageError(
                f"{spec}: configure_optimizers() returned no optimizer "
                f"(got {type(returned).__name__}); give the spec an 'optimizer'"
            )
        mapping["optimizer"] = conventions.optimizer_like(*conventions.all_optimizers(returned))
        if mapping.get("lr") is None and instance.param_groups:
            mapping["lr"] = conventions.group_rate(instance.param_groups[0])
    if mapping.get("trainer") is not None:
        clip, amp = conventions.trainer_settings(mapping["trainer"])
        if mapping.get("grad_clip") is None:
            mapping["grad_clip"] = clip
        if mapping.get("amp") is None:
            mapping["amp"] = amp
    return mapping


def validate(result: Any, spec: str) -> Setup:
    """Check the build function's result against docs/reference.md §1 and fill in defaults."""
    import torch

    mapping = _as_mapping(result, spec)
    warn_unknown_keys(mapping, spec)
    mapping = apply_conventions(mapping, spec)
    for key in ("model", "data"):
        if mapping.get(key) is None:
            raise UsageError(f"{spec} returned no '{key}' (required keys: model, data)")
    model = mapping["model"]
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"{spec}: 'model' must be a torch.nn.Module, got {type(model).__name__}")
    find_unused = ddp_find_unused(model)
    ddp_model = model if find_unused is not None else None
    model, wrappers = plain_module(model)
    data = mapping["data"]
    if isinstance(data, (torch.Tensor, str, bytes)) or not isinstance(data, Iterable):
        raise UsageError(
            f"{spec}: 'data' must be an iterable of batches (a DataLoader, a list, "
            f"a generator), got {type(data).__name__}"
        )
    for key in ("loss", "optimizer"):
        if mapping.get(key) is not None and not callable(mapping[key]):
            raise UsageError(f"{spec}: '{key}' must be callable, got {type(mapping[key]).__name__}")
    weights = mapping.get("loss_weights") or {}
    if not isinstance(weights, Mapping) or not all(isinstance(v, (int, float)) for v in weights.values()):
        raise UsageError(f"{spec}: 'loss_weights' must map component names to numbers")
    amp = mapping.get("amp")
    if amp not in AMP_CHOICES:
        raise UsageError(f"{spec}: 'amp' must be null, 'fp16' or 'bf16', got {amp!r}")
    for key in ("config", "config_keys"):
        if mapping.get(key) is not None and not isinstance(mapping[key], Mapping):
            raise UsageError(f"{spec}: '{key}' must be a mapping, got {type(mapping[key]).__name__}")
    lr = mapping.get("lr")
    setup = Setup(
        model=model,
        data=data,
        loss=mapping.get("loss"),
        loss_weights={str(k): float(v) for k, v in weights.items()},
        optimizer=mapping.get("optimizer"),
        lr=1e-3 if lr is None else _number(lr, "lr", spec, allow_none=False),
        grad_clip=_number(mapping.get("grad_clip"), "grad_clip", spec, allow_none=True),
        amp=amp,
        feature_names=_feature_names(mapping.get("feature_names"), spec),
        config=dict(mapping["config"]) if mapping.get("config") is not None else None,
        config_keys=dict(mapping.get("config_keys") or {}),
        device=_resolve_device(mapping.get("device"), model, spec),
        wrappers=tuple(wrappers),
        ddp_find_unused=find_unused,
        ddp_model=ddp_model,
    )
    if sharded(model):  # last, after every check a rank could fail alone: building it is collective
        try:  # diagnosed as its unsharded replica; the user's sharded model is not touched
            setup.model = plain_replica(model)
        except UsageError as exc:
            raise UsageError(f"{spec}: {exc}") from exc
        setup.wrappers = (*setup.wrappers, FSDP2)
    return setup


def _resolve_device(requested: Any, model: Any, spec: str):
    """The spec's device, else the model's, else cuda when available, else cpu."""
    import torch

    if requested is not None:
        try:
            device = torch.device(requested)
        except (RuntimeError, TypeError) as exc:
            raise UsageError(f"{spec}: bad 'device' {requested!r}: {exc}") from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"{spec}: 'device' is {requested!r} but CUDA is not available here")
        return device
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.device.type != "meta":
            return tensor.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def stderr_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def spec_label(spec: SpecLike) -> str:
    """How the report names a spec that is not a SPEC string."""
    if isinstance(spec, str):
        return spec
    if callable(spec) and not isinstance(spec, Mapping) and hasattr(spec, "__qualname__"):
        return f"{getattr(spec, '__module__', '?')}:{spec.__qualname__}"
    return "<python>"


def load(
    spec: SpecLike,
    overrides: Overrides = None,
    seed: int = 0,
    progress: Callable[[str], None] = stderr_progress,
    name: str | None = None,
) -> Setup:
    """A validated :class:`Setup` from any :data:`SpecLike`: a build is called with torch seeded to
    ``seed`` (the same spec builds the same model); a mapping is already built and taken as it is."""
    import torch

    label = name or spec_label(spec)
    if isinstance(spec, torch.nn.Module):  # callable, but calling it would run its forward with no input
        raise UsageError(
            f"a model alone is not a spec: pass {{'model': model, 'data': batches}} (got a "
            f"{type(spec).__name__}), or a build function that returns that mapping"
        )
    if isinstance(spec, Mapping) or (hasattr(spec, "model") and hasattr(spec, "data")):
        if parse_overrides(overrides):
            raise UsageError("overrides are passed to a build function; this spec is already built")
        return validate(spec, label)
    if not isinstance(spec, str) and not callable(spec):
        raise UsageError(
            f"expected a SPEC string, a build function or a mapping with 'model' and 'data', got {type(spec).__name__}"
        )
    progress(f"nandoctor: loading {label}")
    function, user_file = resolve_function(spec) if isinstance(spec, str) else (spec, None)
    kwargs = parse_overrides(overrides, _float_parameters(function))
    torch.manual_seed(seed)
    return validate(call_build(function, kwargs, label, user_file), label)


def _float_parameters(function: Callable[..., Any]) -> set[str]:
    """The build function's parameters whose default is a float (``--set x=inf`` means the number there)."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return set()
    return {name for name, p in parameters.items() if isinstance(p.default, float)}
