"""What the traced pass records for the activation probes: outputs at a bound, units that fire.

Recorded inside the shared traced pass (no pass of their own), on the device, read back with
the pass's one synchronisation:

* saturation: per module call, the share of output elements exactly at the output's largest or
  smallest value (zero excluded: that is ReLU's business), or, for tanh/sigmoid/softsign, the
  share whose local derivative is in the flat tail. Only outputs that carry a gradient count:
  a mask or a constant computed without parameters has no gradient to block.
* dead units: per ReLU-family module, which units fired (> 0) for some sample.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

RELU_FAMILY = ("ReLU", "ReLU6", "Threshold", "Hardshrink")
SAMPLE = 4096  # output elements a share is estimated from (a share of 0.5 to within about 1%)


def spread_sample(y: Any) -> Any:
    """About ``SAMPLE`` elements of ``y`` spread over all of it, without copying a contiguous output.

    The stride is coprime with the last dimension, so it walks across the features instead of
    meeting the same one over and over.
    """
    from math import gcd

    flat = y.reshape(-1)
    step = max(1, flat.numel() // SAMPLE)
    width = y.shape[-1] if y.dim() else 1
    while step > 1 and gcd(step, width) != 1:
        step += 1
    return flat[::step]


def local_derivative(kind: str, y: Any) -> Any | None:
    """d output / d input of an elementwise activation, from its output, relative to its peak."""
    if kind == "Sigmoid":
        return 4.0 * y * (1.0 - y)
    if kind == "Tanh":
        return 1.0 - y * y
    if kind == "Softsign":
        return (1.0 - y.abs()).square()
    return None


TAIL_KINDS = ("Sigmoid", "Tanh", "Softsign")


def unit_dim(y: Any) -> int:
    """Channels of an image-like map (N, C, H, W) sit in dim 1; features elsewhere in the last."""
    return 1 if y.dim() == 4 else y.dim() - 1


@dataclass
class PinnedRow:
    """One module call's output: share at a bound (or in a flat tail), read back as plain numbers."""

    module: str
    kind: str
    share: float = 0.0
    bound: float = 0.0
    low: float = 0.0
    high: float = 0.0
    tails: bool = False


@dataclass
class Activity:
    """Per batch: pinned rows (in call order) and, per ReLU-family module, fired units (device)."""

    pinned: list[PinnedRow] = field(default_factory=list)
    fired: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)


class ActivityRecorder:
    """Called from the traced pass's forward hook; queues device tensors, never synchronises."""

    def __init__(self, tail_derivative: float):
        self.tail_derivative = tail_derivative
        self.activity = Activity()
        self.queued: list[Any] = []  # per pinned row: [share, bound, low, high] on the device
        self.memo: dict[int, tuple[Any, int, Any]] = {}

    def record(self, name: str, module: Any, y: Any, stats: Any) -> None:
        """``y``: the call's first float output; ``stats``: its ``[min, max, norm]`` already queued."""
        import torch

        kind = type(module).__name__
        if kind in RELU_FAMILY and y.dim() >= 2:
            self._fired(name, y)
        if not y.requires_grad or y.numel() < 8 or stats is None:
            return
        with torch.no_grad():
            cached = self.memo.get(id(y))  # weak: the pass must not keep module outputs alive
            if cached is not None and cached[0]() is y and cached[1] == y._version and kind not in TAIL_KINDS:
                row = cached[2]
            else:
                row = self._pinned(kind, spread_sample(y.detach()), stats)
                self.memo[id(y)] = (weakref.ref(y), y._version, row)
        self.activity.pinned.append(PinnedRow(name, kind, tails=kind in TAIL_KINDS))
        self.queued.append(row)

    def _pinned(self, kind: str, y: Any, stats: Any) -> Any:
        import torch

        low, high = stats[0], stats[1]  # of the whole output: pinned elements sit exactly there
        derivative = local_derivative(kind, y)
        if derivative is not None:
            share = (derivative < self.tail_derivative).float().mean()
            bound = torch.where(y.mean() >= 0, high, low)
        else:
            # one comparison pass per bound; the conditions on the bound are scalars
            at_high = (y == high).sum() * (high != 0) / y.numel()
            at_low = (y == low).sum() * ((low != 0) & (low != high)) / y.numel()
            share = at_high + at_low
            bound = torch.where(at_high >= at_low, high, low)
        return torch.stack([share.float(), bound.float(), low.float(), high.float()])

    def _fired(self, name: str, y: Any) -> None:
        dim = unit_dim(y)
        with __import__("torch").no_grad():
            fired = (y.detach() > 0).movedim(dim, -1).reshape(-1, y.shape[dim]).any(0)
        known = self.activity.fired.get(name)
        self.activity.fired[name] = fired if known is None or known.shape != fired.shape else known | fired
        self.activity.samples[name] = self.activity.samples.get(name, 0) + int(y.shape[0])

    def fill(self, values: list[float]) -> Activity:
        """Take this recorder's ``4 * rows`` numbers from the front of the pass's read-back."""
        for row in self.activity.pinned:
            row.share, row.bound, row.low, row.high = (values.pop(0) for _ in range(4))
        return self.activity
