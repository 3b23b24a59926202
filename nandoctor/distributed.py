"""Runs under ``torchrun``: the process group, the plain module inside a wrapper, and one report.

nandoctor probes the plain module on every rank with that rank's own batches, so none of its
forwards or steps issues a wrapper's collective (DDP's gradient all-reduce or buffer broadcast):
no rank can wait for one the others never issue. The only collectives are nandoctor's own, at
fixed points every rank reaches in the same order: the parameter fingerprint before any probe
and the gather of every rank's results at the end. Each rank then merges the same gathered
results, so every rank holds the same report and exits with the same code.

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
    return any(type(p).__name__ == "DTensor" for p in model.parameters())


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
