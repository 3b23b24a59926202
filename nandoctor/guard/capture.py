"""The capture file: plain tensors and containers only, so it loads with ``weights_only=True``.

A capture holds the state at the start of the window in which a step failed (model, optimizer,
GradScaler, RNG streams), every batch from there to the failing step, the ring buffer of the
last steps' records and the spec when known. Nothing in it is code: loading never unpickles a
callable, and a file that holds one is refused.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nandoctor.errors import UsageError, first_line

FORMAT = "nandoctor-capture"
VERSION = 1


def plain(obj: Any) -> Any:
    """Tensors moved to the CPU inside plain dicts, lists and tuples (a BatchEncoding becomes a dict)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu")
    if isinstance(obj, Mapping):
        return {key: plain(value) for key, value in obj.items()}
    if isinstance(obj, tuple):
        return tuple(plain(value) for value in obj)
    if isinstance(obj, list):
        return [plain(value) for value in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)  # anything else would need code to load: keep only what it was


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
    """Write atomically (a temporary file, then a rename): a crash never leaves half a capture."""
    import torch

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".partial")
    torch.save(dict(payload, format=FORMAT, version=VERSION), temporary)
    os.replace(temporary, target)
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
        raise UsageError(f"{path} holds pickled code or objects, not only tensors; nandoctor loads captures "
                         f"with weights_only=True and refuses it ({_why(exc)})") from exc
    except Exception as exc:  # a file that is not torch's format fails in many ways
        raise UsageError(f"{path} is not a nandoctor capture (torch.load failed: {first_line(exc)[:200]})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UsageError(f"{path} is a torch file but not a nandoctor capture (written by nandoctor.Guard)")
    if payload.get("version", 0) > VERSION:
        raise UsageError(f"{path} was written by a newer nandoctor (capture version {payload['version']})")
    return payload


def _why(exc: BaseException) -> str:
    """The unsupported global torch names in its message, when it gives one."""
    for line in str(exc).splitlines():
        if "Unsupported global" in line or "unsupported" in line.lower():
            return line.strip().removeprefix("WeightsUnpickler error: ").split(" was not an allowed")[0][:200]
    return first_line(exc)[:200]
