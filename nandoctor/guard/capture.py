"""The capture file: plain tensors and containers only, so it loads with ``weights_only=True``.

A capture holds the state at the start of the window in which a step failed (model, optimizer,
GradScaler, RNG streams), every batch from there to the failing step, the ring buffer of the
last steps' records and the spec when known. Nothing in it is code: loading never unpickles a
callable, and a file that holds one is refused.
"""

from __future__ import annotations

import collections
import dataclasses
import keyword
import os
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nandoctor.distributed import active, per_rank_path, plain_state, rank, world_size
from nandoctor.errors import UsageError, first_line

FORMAT = "nandoctor-capture"
VERSION = 1


STRUCT = "__nandoctor_struct__"  # marks a namedtuple or dataclass batch kept as its name and fields


def plain(obj: Any) -> Any:
    """Tensors moved to the CPU inside plain dicts, lists and tuples (a BatchEncoding becomes a dict).

    A namedtuple or dataclass batch keeps its type's name and fields as data (:func:`restored`
    rebuilds a stand-in with the same fields): loading it never imports the user's type.
    """
    import dataclasses

    import torch

    if type(obj).__name__ == "DTensor" and hasattr(obj, "to_local"):
        return _shard(obj)
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        return {STRUCT: "dataclass", "name": type(obj).__name__, "fields": fields}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return {
            STRUCT: "namedtuple",
            "name": type(obj).__name__,
            "fields": {name: plain(value) for name, value in zip(obj._fields, obj)},
        }
    if isinstance(obj, Mapping):
        return {key: plain(value) for key, value in obj.items()}
    if isinstance(obj, tuple):
        return tuple(plain(value) for value in obj)
    if isinstance(obj, list):
        return [plain(value) for value in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)  # anything else would need code to load: keep only what it was


def _shard(tensor: Any) -> dict[str, Any]:
    """This rank's shard of a DTensor (FSDP2) with where it sits in the whole: no collective, since
    a rank may write its capture when the others do not. Replay joins every rank's shards."""
    mesh, placements = tensor.device_mesh, tuple(tensor.placements)
    one_dim = mesh.ndim == 1 and len(placements) == 1
    return {
        STRUCT: "shard",
        "local": tensor.to_local().detach().to("cpu"),
        "shape": list(tensor.shape),
        "dim": placements[0].dim if one_dim and placements[0].is_shard() else None,
        "replicated": one_dim and placements[0].is_replicate(),
        "ranks": mesh.size(),
        "index": mesh.get_local_rank() if mesh.ndim == 1 else None,
        "placements": str(placements),
    }


def _is_shard(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get(STRUCT) == "shard"


def holds_shards(tree: Any) -> bool:
    if _is_shard(tree):
        return True
    if isinstance(tree, Mapping):
        return any(holds_shards(value) for value in tree.values())
    return isinstance(tree, (list, tuple)) and any(holds_shards(value) for value in tree)


class MicroBatches(list):
    """The micro-batches of one accumulated step, in order: replay accumulates them as the run did."""


def plain_step(batch: Any, micro: list[Any]) -> Any:
    """One step's batch for the capture: itself, or all its micro-batches when it accumulated several."""
    if not micro:
        return plain(batch)
    return {STRUCT: "micro_batches", "batches": [plain(b) for b in [batch, *micro]]}


def restored(obj: Any) -> Any:
    """:func:`plain`'s namedtuples and dataclasses as stand-ins of the same name and fields (attribute
    and position access as before; the user's methods are not there)."""
    if isinstance(obj, Mapping) and obj.get(STRUCT) == "micro_batches" and isinstance(obj.get("batches"), list):
        return MicroBatches(restored(b) for b in obj["batches"])
    if (
        isinstance(obj, Mapping)
        and obj.get(STRUCT) in ("namedtuple", "dataclass")
        and isinstance(obj.get("fields"), Mapping)
    ):
        fields = {key: restored(value) for key, value in obj["fields"].items()}
        name = str(obj.get("name", ""))
        if not all(_safe_name(n) for n in (name, *fields)):
            return fields
        if obj[STRUCT] == "namedtuple":
            return collections.namedtuple(name, list(fields))(**fields)
        return dataclasses.make_dataclass(name, list(fields))(**fields)
    if isinstance(obj, Mapping):
        return {key: restored(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(restored(value) for value in obj)
    return obj


def _safe_name(name: Any) -> bool:
    return isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name) and not name.startswith("_")


def rng_states() -> dict[str, Any]:
    """torch (CPU and CUDA), Python and NumPy random streams, as tensors and plain values."""
    import torch

    states: dict[str, Any] = {"torch": torch.random.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy
    except ImportError:
        return states
    kind, keys, pos, has_gauss, cached = numpy.random.get_state()
    states["numpy"] = (str(kind), torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached))
    return states


def set_rng_states(states: Mapping[str, Any]) -> None:
    import torch

    torch.random.set_rng_state(states["torch"])
    random.setstate(_as_tuples(states["python"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    if "numpy" in states:
        try:
            import numpy
        except ImportError:
            return
        kind, keys, pos, has_gauss, cached = states["numpy"]
        numpy.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))


def _as_tuples(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value


def save_capture(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write atomically (a temporary file, then a rename): a crash never leaves half a capture.

    Under torchrun each rank writes its own file (``nan_capture.rank1.pt``) and records its rank;
    the weights are stored as the plain module names them (no ``module.``/``_orig_mod.`` prefix).
    An FSDP2 model's file holds this rank's shards (see :func:`unsharded`).
    """
    import torch

    target = per_rank_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f"{target.name}.{os.getpid()}.partial")  # unique: ranks never share one
    if isinstance(payload.get("model"), dict):
        payload = dict(payload, model=plain_state(payload["model"]))  # replays in one process, unwrapped
    payload = dict(payload, format=FORMAT, version=VERSION)
    if active():
        payload["rank"] = rank()
    if holds_shards(payload.get("model")):  # FSDP2: each rank's file holds its shards; replay joins them
        payload["sharded"] = {"ranks": world_size()}
    torch.save(payload, temporary)
    os.replace(temporary, target)
    load_capture(target)  # "capture written" only for a file that loads back
    return target


def load_capture(path: str | os.PathLike) -> dict[str, Any]:
    """The capture's contents, or a one-line UsageError; never unpickles code (``weights_only=True``)."""
    import pickle

    import torch

    file = Path(path)
    if not file.is_file():
        raise UsageError(f"no such capture file: {path}")
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):
            raise UsageError(
                f"{path} holds pickled code or objects, not only tensors; nandoctor loads captures "
                f"with weights_only=True and refuses it ({_why(exc)})"
            ) from exc
        raise UsageError(f"{path} is corrupt: its pickled contents do not read back ({_why(exc)})") from exc
    except RuntimeError as exc:
        if "zip archive" in str(exc) or "PytorchStreamReader" in str(exc):
            raise UsageError(f"{path} is corrupt or truncated (torch.load: {first_line(exc)[:120]})") from exc
        raise UsageError(f"{path} is not a nandoctor capture (torch.load failed: {first_line(exc)[:200]})") from exc
    except Exception as exc:  # a file that is not torch's format fails in many ways
        raise UsageError(f"{path} is not a nandoctor capture (torch.load failed: {first_line(exc)[:200]})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UsageError(f"{path} is a torch file but not a nandoctor capture (written by nandoctor.Guard)")
    if payload.get("version", 0) > VERSION:
        raise UsageError(f"{path} was written by a newer nandoctor (capture version {payload['version']})")
    if isinstance(payload.get("batches"), list):
        payload["batches"] = [restored(batch) for batch in payload["batches"]]
    return payload


def check_capture(path: str | os.PathLike, payload: Mapping[str, Any]) -> None:
    """A one-line UsageError for a capture replay cannot read (see :func:`malformed`)."""
    problem = malformed(payload)
    if problem:
        raise UsageError(f"{path} is a malformed capture: {problem}")


def malformed(payload: Mapping[str, Any]) -> str | None:
    """What a capture lacks that replay reads: the failing step, its batches, weights, rates, ring."""
    import math

    step, batches, lrs, ring = payload.get("step"), payload.get("batches"), payload.get("lrs"), payload.get("ring")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return f"'step' must be the failing step's number, got {step!r}"
    if not isinstance(batches, list) or not batches:
        return "it holds no batches (the failing window's batches are what replay re-runs)"
    if not isinstance(payload.get("model"), Mapping):
        return "it holds no model weights"
    if lrs is not None and (
        not isinstance(lrs, list)
        or not all(isinstance(row, (list, tuple)) for row in lrs)
        or not all(isinstance(r, (int, float)) and math.isfinite(r) and r >= 0 for row in lrs for r in row)
    ):
        return "'lrs' must list each step's finite learning rates"
    if lrs is not None and len(lrs) not in (0, len(batches)):
        return f"it holds {len(batches)} batches but learning rates for {len(lrs)} steps"
    if ring is not None and (
        not isinstance(ring, list) or not all(isinstance(r, Mapping) and "step" in r for r in ring)
    ):
        return "its 'ring' of step records is not a list of records with a 'step'"
    return None


def _why(exc: BaseException) -> str:
    """The unsupported global torch names in its message, when it gives one."""
    for line in str(exc).splitlines():
        if "Unsupported global" in line or "unsupported" in line.lower():
            return line.strip().removeprefix("WeightsUnpickler error: ").split(" was not an allowed")[0][:200]
    return first_line(exc)[:200]


RANK_SUFFIX = re.compile(r"\.rank\d+$")


def unsharded(path: str | os.PathLike, payload: dict[str, Any]) -> dict[str, Any]:
    """The capture with whole weights and optimizer state: an FSDP2 run's per-rank captures joined.

    Each rank of an FSDP2 run stores only its own shards (gathering the whole at the failure would
    be a collective the ranks that did not fail never join). Replay reads every rank's capture of
    the same window (``nan_capture.rank0.pt`` ... beside the one named) and joins the shards; a
    missing rank, captures of different windows or a layout other than one-dimensional sharding is
    a one-line UsageError.
    """
    if not isinstance(payload.get("sharded"), Mapping):
        return payload
    ranks, file = int(payload["sharded"].get("ranks", 1)), Path(path)
    base = RANK_SUFFIX.sub("", file.stem)
    siblings = [file.with_name(f"{base}.rank{number}{file.suffix}") for number in range(ranks)]
    missing = [sibling.name for sibling in siblings if not sibling.is_file()]
    whose = f"rank {payload.get('rank')}'s FSDP2 shards of the weights"
    if missing:
        raise UsageError(
            f"{path} holds {whose}; replay joins the captures of all {ranks} ranks, and "
            f"{', '.join(missing)} is not beside it (each rank writes its own when its step fails)"
        )
    parts = [payload if sibling.resolve() == file.resolve() else load_capture(sibling) for sibling in siblings]
    starts = sorted({str(part.get("window_start")) for part in parts})
    if len(starts) > 1:
        raise UsageError(
            f"{path} holds {whose}, but the ranks' captures start at different steps ({', '.join(starts)}): "
            "their shards are not one model's weights; replay needs every rank's capture of the same window"
        )
    joined = {key: _joined([part.get(key) for part in parts], f"{path}: {key}") for key in ("model", "optimizer")}
    return {**payload, **joined, "sharded": None}


def _joined(trees: list[Any], where: str) -> Any:
    """One tree from the ranks' trees: every shard record the whole tensor, the rest rank 0's."""
    import torch

    first = trees[0]
    if _is_shard(first):
        if not all(_is_shard(tree) for tree in trees):
            raise UsageError(f"{where}: the ranks' captures do not hold the same tensors")
        if first.get("replicated"):
            return first["local"]
        if first.get("dim") is None or any(tree.get("index") is None for tree in trees):
            raise UsageError(
                f"{where} is sharded as {first.get('placements')}: replay joins one-dimensional FSDP2 shards only"
            )
        ordered = [tree["local"] for tree in sorted(trees, key=lambda tree: tree["index"])]
        whole = torch.cat(ordered, dim=first["dim"])
        if list(whole.shape) != list(first["shape"]):
            raise UsageError(f"{where}: the ranks' shards join to {list(whole.shape)}, not {first['shape']}")
        return whole
    if isinstance(first, Mapping) and all(isinstance(tree, Mapping) for tree in trees):
        return {key: _joined([tree.get(key) for tree in trees], f"{where}.{key}") for key in first}
    if isinstance(first, (list, tuple)) and all(isinstance(tree, (list, tuple)) for tree in trees):
        return type(first)(_joined(list(column), f"{where}[{i}]") for i, column in enumerate(zip(*trees)))
    return first
