"""Batches: read once, move to the device through any nesting, name their tensors."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from nandoctor.errors import UsageError, describe


def map_tensors(obj: Any, fn: Callable) -> Any:
    """Apply ``fn`` to every tensor inside tuples, lists, dicts and namedtuples."""
    import torch

    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        mapped = {key: map_tensors(value, fn) for key, value in obj.items()}
        try:
            return type(obj)(mapped)
        except TypeError:
            return mapped
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(map_tensors(value, fn) for value in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_tensors(value, fn) for value in obj)
    return obj


def iter_tensors(obj: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Yield ``(path, tensor)``: dict keys and tuple positions joined by dots; a bare tensor is ``batch``."""
    import torch

    if isinstance(obj, torch.Tensor):
        yield (path or "batch"), obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from iter_tensors(value, f"{path}.{key}" if path else str(key))
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            yield from iter_tensors(value, f"{path}.{index}" if path else str(index))


def to_device(batch: Any, device: Any) -> Any:
    return map_tensors(batch, lambda t: t.to(device))


def read_batches(data: Iterable, count: int) -> list[Any]:
    """The first ``count`` batches, read once so that one-pass iterables can be reused."""
    try:
        batches = list(itertools.islice(iter(data), count))
    except Exception as exc:
        raise UsageError(f"reading batches from 'data' raised {describe(exc)}") from exc
    if not batches:
        raise UsageError("'data' yielded no batches")
    if not any(True for batch in batches for _ in iter_tensors(batch)):
        raise UsageError("the batches from 'data' hold no tensors")
    return batches
