"""The batches a sweep trains and judges on: fresh ones from ``data``, and held-out ones never trained on.

The last cached batch is held out (when two or more are cached). Training reads the other
cached batches and then fresh ones from a new iterator over ``data`` (when ``data`` can be
iterated again: a one-pass generator is never read past the cached batches), so a run does not
"learn" by memorising three batches. What is read is cached (up to a bound), so every rate
sees the same sequence; past the end, the sequence repeats. A fresh batch from a loader that
reshuffles a small set holds samples of the held-out batch again: those rows are dropped from it
(matched by value), or the held-out loss would reward the rates that memorise fastest.
Under ``torchrun`` each step accumulates several of the rank's own batches: the gradient DDP's
averaged all-reduce gives, so the rates judged are the rates for that run.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from nandoctor.batches import iter_tensors, map_tensors, to_device
from nandoctor.distributed import world_size


class BatchStream:
    """``train(i)`` is the batch of step ``i`` (of micro-batch ``i``: each step trains on ``group`` of them),
    the same for every rate; ``heldout`` is never trained on.

    Under ``torchrun`` a step accumulates ``group`` of the rank's own batches (see :func:`rank_group`):
    the gradient DDP's all-reduce averages, with one rank's batch in memory at a time.
    """

    def __init__(self, ctx: Any, limit: int):
        self.group, self.group_note = rank_group(ctx)
        self._device = ctx.setup.device
        self._skip = len(ctx.batches)
        self._fresh = None if len(ctx.batches) < ctx.settings.batches else ctx.setup.data
        self.fresh_read = 0
        cached = list(ctx.batches)
        if self.group > 1 and len(cached) < 2 * self.group:  # one step's batches to train on, one to hold out
            self._read_more_into(cached, 2 * self.group - len(cached))
            self._skip = len(cached)
            if len(cached) < 2 * self.group:
                self.group, self.group_note = 1, f"one rank's batch: the data holds only {len(cached)} batch(es)"
        held = self.group if len(cached) > self.group else 0
        self.heldout = cached[-held:] if held else []
        self._train = cached[:-held] if held else cached
        self._indices = list(range(len(self._train)))  # each training batch's index in ``data``
        self._limit = max(limit * self.group, len(self._train))
        self._held_keys = {k for b in self.heldout for k in (sample_keys(b) or [])}
        self.heldout_rows_dropped = 0  # rows of fresh batches that were samples of the held-out batch

    def _read_more_into(self, cached: list[Any], count: int) -> None:
        """Batches past the cached ones, read before any step (fewer when ``data`` ends or is one-pass)."""
        cached += [to_device(b, self._device) for b in self._fresh_batches(count)]

    def _fresh_batches(self, count: int) -> list[Any]:
        """Up to ``count`` more batches from one fresh iterator over ``data`` (fewer, and none after, when it
        ends, cannot be read again, or is a one-pass iterator that reading would consume)."""
        if self._fresh is None:
            return []
        try:
            if not hasattr(self, "_iterator"):
                iterator = iter(self._fresh)
                if iterator is self._fresh:  # a one-pass iterator: reading on would consume the user's data
                    self._fresh = None
                    return []
                # a re-iterable (list, DataLoader) starts again from the top: skip what is cached already
                self._iterator = itertools.islice(iterator, self._skip, None)
            batches = list(itertools.islice(self._iterator, count))
        except (Exception, SystemExit):  # a loader that cannot be read again: train on the cached batches
            batches = []
        if len(batches) < count:
            self._fresh = None
        return batches

    def _read_more(self, count: int) -> None:
        """Read ``count`` more batches to train on; stop quietly when ``data`` ends."""
        batches = self._fresh_batches(count)
        self._indices += range(self._skip + self.fresh_read, self._skip + self.fresh_read + len(batches))
        self._train += [to_device(self._without_heldout(b), self._device) for b in batches]
        self.fresh_read += len(batches)

    def _without_heldout(self, batch: Any) -> Any:
        """``batch`` less its rows that are held-out samples; as it is when none are, or all (a loader
        that repeats one batch has no held-out samples to protect)."""
        keys = sample_keys(batch) if self._held_keys else None
        if keys is None:
            return batch
        keep = [i for i, key in enumerate(keys) if key not in self._held_keys]
        if not keep or len(keep) == len(keys):
            return batch
        import torch

        self.heldout_rows_dropped += len(keys) - len(keep)
        index = torch.tensor(keep)
        return map_tensors(batch, lambda t: t.index_select(0, index.to(t.device)) if t.dim() >= 1 else t)

    def train(self, step: int) -> Any:
        """The batch of micro-batch ``step`` (the step's own when ``group`` is 1)."""
        if step >= len(self._train) and len(self._train) < self._limit:
            self._read_more(min(max(step + 1 - len(self._train), 8), self._limit - len(self._train)))
        return self._train[step % len(self._train)]

    def data_index(self, step: int) -> int:
        """The index in ``data`` of micro-batch ``step`` (call after ``train(step)``)."""
        return self._indices[step % len(self._train)]

    @property
    def distinct(self) -> int:
        return len(self._train)


def rank_group(ctx: Any) -> tuple[int, str | None]:
    """How many of this rank's batches one sweep step accumulates, and the note that says so: under
    ``torchrun``, DDP averages the gradients of every rank's batch, so the rates a sweep judges are
    for a batch the world size times one rank's (``sweep_rank_batches`` sets another count, in one
    process too: a run that accumulates gradients over several batches). Accumulating the rank's own
    batches gives that gradient with one rank's batch in memory and no collective inside the sweep
    (every rank's sweep runs alone, see :mod:`nandoctor.distributed`); BatchNorm sees one rank's
    batch at a time, as under DDP. 1, with no note, in one process by default."""
    ranks = world_size()
    group = ctx.settings.sweep_rank_batches or ranks
    if group == 1:
        return 1, None if ranks == 1 else "one rank's batch (sweep_rank_batches: 1)"
    if ranks == 1:
        return group, f"each step accumulates {group} batches (sweep_rank_batches: {group})"
    return group, f"each step accumulates {group} of a rank's batches: the gradient DDP averages over {ranks} ranks"


def sample_keys(batch: Any) -> list[float] | None:
    """One number per sample: a fixed projection of its row in every tensor of the batch (equal rows,
    equal numbers); None when the tensors do not share a first dimension (samples cannot be told apart)."""
    import torch

    tensors = [t for _, t in iter_tensors(batch) if t.dim() >= 1]
    size = tensors[0].shape[0] if tensors else 0
    if size < 1 or any(t.shape[0] != size for t in tensors):
        return None
    total = torch.zeros(size, dtype=torch.float64)
    for t in tensors:
        rows = t.detach().reshape(size, -1).to("cpu", torch.float64)
        weights = torch.rand(rows.shape[1], generator=torch.Generator().manual_seed(rows.shape[1]), dtype=torch.float64)
        total += rows @ (weights + 0.5)
    return total.tolist()


def permute_targets(batch: Any, paths: set[str], generator: Any, path: str = "") -> Any:
    """The batch with each tensor at one of ``paths`` permuted across samples (dimension 0)."""
    import torch

    if isinstance(batch, torch.Tensor):
        if (path or "batch") in paths and batch.dim() >= 1 and batch.shape[0] > 1:
            order = torch.randperm(batch.shape[0], generator=generator).to(batch.device)
            return batch[order]
        return batch
    if isinstance(batch, Mapping):
        mapped = {k: permute_targets(v, paths, generator, f"{path}.{k}" if path else str(k)) for k, v in batch.items()}
        try:
            return type(batch)(mapped)
        except TypeError:
            return mapped
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(
            *(permute_targets(v, paths, generator, f"{path}.{i}" if path else str(i)) for i, v in enumerate(batch))
        )
    if isinstance(batch, (list, tuple)):
        return type(batch)(
            permute_targets(v, paths, generator, f"{path}.{i}" if path else str(i)) for i, v in enumerate(batch)
        )
    return batch


def target_paths(batch: Any, consumed: list[str]) -> set[str]:
    """Integer and float tensors of a batch that no module of the forward read: what the loss compares against."""
    import torch

    from nandoctor.batches import iter_tensors

    return {
        p
        for p, t in iter_tensors(batch)
        if p not in consumed and t.dim() >= 1 and t.shape[0] > 1 and t.dtype != torch.bool
    }


class PermutedStream:
    """The same stream with targets permuted across samples: the control run (labels carry no signal)."""

    def __init__(self, stream: BatchStream, paths: set[str], seed: int):
        import torch

        self.stream, self.paths, self.heldout = stream, paths, stream.heldout
        self._generator = torch.Generator().manual_seed(seed)
        self._cache: dict[int, Any] = {}

    def train(self, step: int) -> Any:
        batch = self.stream.train(step)
        index = step % self.stream.distinct
        if index not in self._cache:  # the same shuffled batch each time it comes round
            self._cache[index] = permute_targets(batch, self.paths, self._generator)
        return self._cache[index]

    @property
    def distinct(self) -> int:
        return self.stream.distinct

    @property
    def group(self) -> int:
        return self.stream.group
