"""Runs under ``torchrun``: the process group, the plain module inside a wrapper, and one report.

nandoctor probes the plain module on every rank with that rank's own batches, so none of its
forwards or steps issues a wrapper's collective (DDP's gradient all-reduce or buffer broadcast):
no rank can wait for one the others never issue. The only collectives are nandoctor's own, at
fixed points every rank reaches in the same order: the parameter fingerprint before any probe
and the gather of every rank's results at the end. Each rank then merges the same gathered
results, so every rank holds the same report and exits with the same code. An FSDP2
(``fully_shard``) model is probed as its unsharded replica (:func:`plain_replica`), gathered once
at load time, when every rank gathers the same parameters in the same order.

In one process (no group initialised, no ``torchrun`` environment) every helper here is a no-op
that does not import ``torch.distributed``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from nandoctor.errors import UsageError, first_line

#: seconds a rank waits in one of nandoctor's collectives before it gives up (``NANDOCTOR_RANK_TIMEOUT``)
DEFAULT_TIMEOUT_S = 300.0


def launched() -> bool:
    """Whether a launcher (``torchrun``) started this process as one of several ranks."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ
    except ValueError:
        return False


def active() -> bool:
    """Whether a process group of more than one rank is initialised in this process."""
    if "torch" not in sys.modules and not launched():
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    if not active():
        return 0
    import torch.distributed as dist

    return dist.get_rank()


def world_size() -> int:
    if not active():
        return 1
    import torch.distributed as dist

    return dist.get_world_size()


def reporting_rank() -> bool:
    """Whether this process prints and writes the report: rank 0, or the only process."""
    if active():
        return rank() == 0
    return not launched() or os.environ.get("RANK", "0") == "0"


def timeout_s() -> float:
    try:
        return float(os.environ.get("NANDOCTOR_RANK_TIMEOUT", DEFAULT_TIMEOUT_S))
    except ValueError:
        return DEFAULT_TIMEOUT_S


@contextmanager
def process_group() -> Iterator[None]:
    """Under ``torchrun`` with no group yet, one for the run (gloo, or NCCL when CUDA is there),
    so the build function can wrap its model in DDP as in training; destroyed after."""
    if not launched():
        yield
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s()))
    try:
        yield
    finally:
        dist.destroy_process_group()


@contextmanager
def ranks_leave_together() -> Iterator[None]:
    """Under ``torchrun``, no rank exits before every rank has finished its command.

    torchrun stops the other ranks as soon as one exits with a non-zero code: a rank 1 that leaves
    while rank 0 still renders the report (exit 1, "unhealthy") would take the report with it.
    The wait uses torchrun's own store, not the process group, which the command has torn down.
    """
    interrupted = False
    try:
        yield
    except KeyboardInterrupt:  # Ctrl-C reaches every rank: none waits for another
        interrupted = True
        raise
    finally:
        if not interrupted and launched() and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            _wait_for_every_rank()


def _wait_for_every_rank() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        import torch.distributed as dist

        timeout = timedelta(seconds=timeout_s())
        store = dist.TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout
        )
        prefix = f"nandoctor/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/finished"
        store.set(f"{prefix}/{os.environ['RANK']}", "1")
        store.wait([f"{prefix}/{r}" for r in range(int(os.environ["WORLD_SIZE"]))], timeout)
    except Exception:  # noqa: BLE001 - a rank that crashed or a store that is gone: exit as we are
        pass


def label(message: str) -> str:
    """A progress line labelled with its rank when several ranks print."""
    if active():
        return f"[rank {rank()}] {message}"
    return f"[rank {os.environ.get('RANK')}] {message}" if launched() else message


def gather(value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order, on every rank; ``[value]`` in one process."""
    if not active():
        return [value]
    import torch.distributed as dist

    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def plain_module(model: Any) -> tuple[Any, list[str]]:
    """The module a wrapper trains, and the wrappers taken off (outermost first).

    ``DistributedDataParallel`` and ``DataParallel`` keep it in ``.module``, ``torch.compile`` in
    ``._orig_mod``. The parameters are the same tensors: probing the plain module probes the model.
    """
    wrappers: list[str] = []
    while True:
        kind = type(model).__name__
        if kind in ("DistributedDataParallel", "DataParallel") and hasattr(model, "module"):
            wrappers.append(kind)
            model = model.module
        elif kind == "OptimizedModule" and hasattr(model, "_orig_mod"):
            wrappers.append("torch.compile")
            model = model._orig_mod
        else:
            return model, wrappers


def ddp_find_unused(model: Any) -> bool | None:
    """DDP's ``find_unused_parameters`` for a model wrapped in DistributedDataParallel (under any
    other wrapper), None for one that is not: without it, DDP raises on parameters no loss reaches."""
    while True:
        kind = type(model).__name__
        if kind == "DistributedDataParallel":
            return bool(getattr(model, "find_unused_parameters", False))
        if kind == "DataParallel" and hasattr(model, "module"):
            model = model.module
        elif kind == "OptimizedModule" and hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return None


def sharded(model: Any) -> bool:
    """Whether the model's parameters are sharded DTensors (FSDP2 ``fully_shard``)."""
    return any(_is_dtensor(p) for p in model.parameters())


def _is_dtensor(tensor: Any) -> bool:
    return type(tensor).__name__ == "DTensor" and hasattr(tensor, "full_tensor")


def local_part(tensor: Any) -> Any:
    """This rank's shard of a DTensor (a plain tensor: no collective), any other tensor as it is."""
    return tensor.to_local() if _is_dtensor(tensor) else tensor


#: how ``Setup.wrappers`` and the report name FSDP2: the model was diagnosed as its unsharded replica
FSDP2 = "FSDP2 fully_shard"
#: what ``fully_shard`` adds to a module's ``__dict__`` (its state, its flags), and ``module.compile()``'s
#: compiled call (bound to the sharded module): a replica drops them
FSDP_KEYS = ("__composable_api_state_key_", "_is_fsdp_managed_module", "_fsdp_use_orig_params", "_compiled_call_impl")
#: the module's hook tables; FSDP's own hooks (its pre/post forward, its state-dict hooks) are dropped
HOOK_TABLES = (
    "_forward_pre_hooks",
    "_forward_hooks",
    "_backward_pre_hooks",
    "_backward_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)
#: flags keyed by hook id (with kwargs, always called): kept for the hooks that stay
HOOK_FLAGS = ("_forward_pre_hooks_with_kwargs", "_forward_hooks_with_kwargs", "_forward_hooks_always_called")
FSDP_CODE = ("torch.distributed.fsdp", "torch.distributed._composable")


def _fsdp_owned(hook: Any) -> bool:
    """A hook FSDP registered: its function (or the object its method is bound to) is FSDP's code."""
    for candidate in (hook, getattr(hook, "hook", None), getattr(hook, "func", None), getattr(hook, "__self__", None)):
        owner = getattr(candidate, "__module__", None) if callable(candidate) else type(candidate).__module__
        if isinstance(owner, str) and owner.startswith(FSDP_CODE):
            return True
    return False


def _fsdp_class(cls: type) -> bool:
    return cls.__name__ == "FSDPModule" and cls.__module__.startswith("torch.distributed")


def _unsharded_class(cls: type) -> type:
    """``FSDPLinear`` (bases ``FSDPModule``, ``Linear``) -> ``Linear``; any other class as it is."""
    if not any(_fsdp_class(base) for base in cls.__mro__):
        return cls
    bases = [base for base in cls.__bases__ if not any(_fsdp_class(b) for b in base.__mro__)]
    if len(bases) != 1:
        raise UsageError(f"cannot tell the module class inside FSDP's {cls.__name__} (bases {cls.__bases__})")
    return bases[0]


def plain_replica(model: Any) -> Any:
    """A plain, unsharded copy of an FSDP2 (``fully_shard``) model, the same on every rank.

    nandoctor probes the whole model on each rank with that rank's own batches and issues no
    collective inside a probe (see this module's docstring). An FSDP2 model all-gathers its
    parameters inside every forward and reduce-scatters gradients in every backward, so probing
    it would put FSDP's collectives inside nandoctor's forwards, and a rank whose probe stops
    early (a NaN, a crash found) would leave the others waiting. So it is diagnosed as its
    unsharded replica: the same module tree of the original classes (``Linear``, not
    ``FSDPLinear``), the same attributes and train/eval modes, the user's own hooks (FSDP's are
    dropped), each parameter its full tensor (``full_tensor()``: a collective, every rank takes
    the parameters in the same order) on the device of its local shard, each buffer a clone.
    This costs one full copy of the weights on every rank. The user's sharded model is not
    touched. A layout the replica cannot stand for (a mesh of fewer ranks than the run, as in
    pipeline parallelism; parameters still on the meta device) or a replica that does not fit in
    memory raises a one-line :class:`UsageError`, on every rank.
    """
    import torch

    tensors: dict[int, Any] = {}  # id of the user's tensor -> its source, in one order on every rank
    for module in model.modules():
        for tensor in [*module._parameters.values(), *module._buffers.values()]:
            if tensor is not None and id(tensor) not in tensors:
                tensors[id(tensor)] = tensor
    problem = None
    full: dict[int, Any] = {}
    for key, tensor in tensors.items():
        if not _is_dtensor(tensor):
            continue
        local = tensor.to_local()
        if tensor.device_mesh.size() != world_size():
            problem = (
                f"a parameter is sharded over {tensor.device_mesh.size()} of the {world_size()} ranks (pipeline or "
                "tensor parallelism?): nandoctor needs the whole model on every rank"
            )
            break
        if local.is_meta:
            problem = "the sharded parameters are on the meta device: initialise them (to_empty, then init) first"
            break
        try:  # every full tensor before any collective: a replica that does not fit fails on every rank alike
            full[key] = torch.empty(tensor.shape, dtype=tensor.dtype, device=local.device)
        except RuntimeError as exc:  # torch.OutOfMemoryError is one
            problem = f"its unsharded replica (one full copy of the weights per rank) does not fit: {first_line(exc)}"
            break
    # as ``ranks.on_every_rank`` gathers a rank's outcome: a rank that failed alone before this point is named
    outcomes = gather(("usage", problem) if problem else ("ok", None))
    failed = [(number, found) for number, (kind, found) in enumerate(outcomes) if kind != "ok"]
    if failed:
        full.clear()
        number, found = failed[0]
        where = f" (on rank {number})" if len(failed) < len(outcomes) else ""  # on every rank: said once
        raise UsageError(f"FSDP2 model: {found}{where}")
    try:
        with torch.no_grad():
            for key, target in full.items():
                target.copy_(tensors[key].full_tensor())
    except Exception as exc:  # every rank gathers the same parameters: they fail alike (or time out)
        raise UsageError(f"FSDP2 model: gathering a parameter whole (full_tensor) failed: {first_line(exc)}") from exc
    return _replicate(model, full, {})


def _replicate(module: Any, full: dict[int, Any], done: dict[int, Any]) -> Any:
    """One module of the replica (shared modules and tied parameters stay shared)."""
    import torch

    if id(module) in done:
        return done[id(module)]
    cls = _unsharded_class(type(module))
    replica = cls.__new__(cls)
    done[id(module)] = replica
    state = {k: v for k, v in module.__dict__.items() if not k.startswith(FSDP_KEYS)}
    for table in HOOK_TABLES:
        if table in state:
            state[table] = type(state[table])((k, h) for k, h in state[table].items() if not _fsdp_owned(h))
    kept = {k for table in ("_forward_pre_hooks", "_forward_hooks") for k in state.get(table, {})}
    for table in HOOK_FLAGS:
        if table in state:
            state[table] = type(state[table])((k, v) for k, v in state[table].items() if k in kept)
    parameters = {}
    for name, parameter in module._parameters.items():
        if parameter is not None and id(parameter) not in done:
            value = full[id(parameter)] if id(parameter) in full else parameter.detach().clone()
            done[id(parameter)] = torch.nn.Parameter(value, requires_grad=parameter.requires_grad)
        parameters[name] = None if parameter is None else done[id(parameter)]
    buffers = {}
    for name, buffer in module._buffers.items():
        if buffer is not None and id(buffer) not in done:
            done[id(buffer)] = full[id(buffer)] if id(buffer) in full else buffer.detach().clone()
        buffers[name] = None if buffer is None else done[id(buffer)]
    state["_parameters"], state["_buffers"] = parameters, buffers
    state["_non_persistent_buffers_set"] = set(module._non_persistent_buffers_set)
    state["_modules"] = {
        name: None if child is None else _replicate(child, full, done) for name, child in module._modules.items()
    }
    replica.__dict__.update(state)
    return replica


def fingerprint(model: Any) -> dict[str, tuple[float, float]]:
    """Per parameter and buffer: (sum, sum of squares) in float64, one read-back for all of them."""
    import torch

    named = [(n, t) for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_floating_point()]
    if not named:
        return {}
    with torch.no_grad():
        sums = torch.stack(
            [torch.stack([t.detach().double().sum(), t.detach().double().pow(2).sum()]) for _, t in named]
        ).cpu()
    return {name: (float(row[0]), float(row[1])) for (name, _), row in zip(named, sums.tolist())}


#: prefixes wrappers put before every state-dict key: DDP/DataParallel, torch.compile, FSDP (1)
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "_fsdp_wrapped_module.")


def plain_state(state: dict[str, Any]) -> dict[str, Any]:
    """A state dict with the wrappers' prefixes taken off, as the plain module names its tensors."""
    changed = True
    while changed and state:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in state):
                state = {key[len(prefix) :]: value for key, value in state.items()}
                changed = True
    return state


def per_rank_path(path: Any) -> Any:
    """``nan_capture.pt`` -> ``nan_capture.rank1.pt`` under torchrun: each rank writes its own file."""
    from pathlib import Path

    path = Path(path)
    if not active() and not launched():
        return path
    number = rank() if active() else int(os.environ.get("RANK", "0"))
    return path.with_name(f"{path.stem}.rank{number}{path.suffix}")


@contextmanager
def local_sync_batchnorm(model: Any) -> Iterator[list[str]]:
    """Under torchrun, every ``SyncBatchNorm`` of ``model`` runs as a per-rank BatchNorm while inside
    (the names of those modules; restored on exit). A training-mode SyncBatchNorm all-reduces its
    statistics in every forward: a collective inside the probes, where ranks run different forwards
    (a rate cut on one rank only, a forward that raises on one) and one would wait for the other."""
    if not active():
        yield []
        return
    import types

    import torch

    synced = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    local_forward = torch.nn.modules.batchnorm._BatchNorm.forward
    for _, module in synced:
        module.forward = types.MethodType(local_forward, module)  # an instance attribute: found before the class's
    try:
        yield [name for name, _ in synced]
    finally:
        for _, module in synced:
            module.__dict__.pop("forward", None)
