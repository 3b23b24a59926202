"""Batches: read once, move to the device through any nesting, name their tensors."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from nandoctor.errors import UsageError, UserExit, describe


def _is_dataclass_instance(obj: Any) -> bool:
    return dataclasses.is_dataclass(obj) and not isinstance(obj, type)


def _fields(obj: Any) -> list[tuple[str, Any]]:
    """A dataclass's fields (namedtuples use ``_fields``) as (name, value)."""
    return [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj) if hasattr(obj, f.name)]


def map_tensors(obj: Any, fn: Callable) -> Any:
    """Apply ``fn`` to every tensor inside tuples, lists, dicts, namedtuples and dataclasses."""
    import torch

    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if _is_dataclass_instance(obj):
        mapped = copy.copy(obj)  # not dataclasses.replace: fields with init=False must survive
        for name, value in _fields(obj):
            object.__setattr__(mapped, name, map_tensors(value, fn))  # frozen dataclasses too
        return mapped
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
    """Yield ``(path, tensor)``: dict keys, namedtuple and dataclass fields and tuple positions
    joined by dots; a bare tensor is ``batch``."""
    import torch

    def join(key: Any) -> str:
        return f"{path}.{key}" if path else str(key)

    if isinstance(obj, torch.Tensor):
        yield (path or "batch"), obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from iter_tensors(value, join(key))
    elif _is_dataclass_instance(obj):
        for name, value in _fields(obj):
            yield from iter_tensors(value, join(name))
    elif isinstance(obj, tuple) and hasattr(obj, "_fields"):
        for name, value in zip(obj._fields, obj):
            yield from iter_tensors(value, join(name))
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            yield from iter_tensors(value, join(index))


def to_device(batch: Any, device: Any) -> Any:
    return map_tensors(batch, lambda t: t.to(device))


def dense(tensor: Any) -> Any:
    """A sparse tensor as a dense one (statistics per feature count the zeros); others unchanged."""
    import torch

    return tensor if tensor.layout == torch.strided else tensor.to_dense()


_WORKER = re.compile(r"^Caught (\w+) in DataLoader worker process (\d+)")
_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+)')


def loader_error(exc: BaseException) -> str:
    """``describe(exc)``, but for a DataLoader worker's exception the worker's own message and line.

    torch re-raises it as "Caught ValueError in DataLoader worker process 1" with the worker's
    traceback as text; the last lines of that text are the message that names the record.
    """
    text = str(exc)
    head = _WORKER.match(text)
    if not head or "Original Traceback" not in text:
        import traceback

        user = [
            frame
            for frame in traceback.extract_tb(exc.__traceback__)
            if "site-packages" not in frame.filename
            and "/torch/" not in frame.filename
            and "/nandoctor/" not in frame.filename
        ]
        return describe(exc) + (f" (at {user[-1].filename}:{user[-1].lineno})" if user else "")
    lines = text.rstrip().splitlines()
    frames = [(index, match) for index, line in enumerate(lines) if (match := _FRAME.match(line))]
    message_start = next((i for i in range(len(lines) - 1, -1, -1) if lines[i].startswith(" ")), 0) + 1
    message = " ".join(line.strip() for line in lines[message_start:]) or head.group(1)
    user = [m for _, m in frames if "site-packages" not in m.group(1) and "/torch/" not in m.group(1)]
    where = f" (at {user[-1].group(1)}:{user[-1].group(2)})" if user else ""
    return f"{message} [in DataLoader worker process {head.group(2)}]{where}"


def read_batches(data: Iterable, count: int) -> list[Any]:
    """The first ``count`` batches, read once so that one-pass iterables can be reused."""
    batches: list[Any] = []
    try:
        try:
            for batch in itertools.islice(iter(data), count):
                batches.append(batch)
        except SystemExit as exc:
            raise UserExit.of(exc, "the data loader") from None
    except Exception as exc:
        raise UsageError(
            f"reading batches from 'data' raised {loader_error(exc)} (after {len(batches)} good batch(es))"
        ) from exc
    if not batches:
        raise UsageError("'data' yielded no batches")
    if not any(True for batch in batches for _ in iter_tensors(batch)):
        raise UsageError("the batches from 'data' hold no tensors")
    return batches


def check_feature_names(feature_names: Any, batch: Any) -> None:
    """``feature_names`` must fit the batch: a list names some float input's last dimension; a
    mapping's keys are batch keys or positions holding a float input that wide (contract §1)."""
    if feature_names is None:
        return
    floats = {path: tensor for path, tensor in iter_tensors(batch) if tensor.is_floating_point()}

    def width(tensor: Any) -> int:
        return int(tensor.shape[-1]) if tensor.dim() else 1

    widths = ", ".join(f"{path}: {width(t)}" for path, t in floats.items()) or "none"
    if not isinstance(feature_names, Mapping):
        if not any(width(t) == len(feature_names) for t in floats.values()):
            raise UsageError(
                f"'feature_names' lists {len(feature_names)} names but no float input of the "
                f"batches is that wide (last dimensions: {widths})"
            )
        return
    fields = getattr(batch, "_fields", None)
    for key, names in feature_names.items():
        path = fields[key] if fields and isinstance(key, int) and 0 <= key < len(fields) else str(key)
        if path not in floats:
            raise UsageError(
                f"'feature_names' names {key!r}, but the batches hold no float input there "
                f"(float inputs: {', '.join(floats) or 'none'})"
            )
        if width(floats[path]) != len(names):
            raise UsageError(
                f"'feature_names'[{key!r}] lists {len(names)} names but {path!r} has "
                f"{width(floats[path])} features (its last dimension)"
            )
