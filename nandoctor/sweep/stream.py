"""The batches a sweep trains and judges on: fresh ones from ``data``, and held-out ones never trained on.

The last cached batch is held out (when two or more are cached). Training reads the other
cached batches and then fresh ones from a new iterator over ``data`` (when ``data`` can be
iterated again: a one-pass generator is never read past the cached batches), so a run does not
"learn" by memorising three batches. What is read is cached (up to a bound), so every rate
sees the same sequence; past the end, the sequence repeats. A fresh batch from a loader that
reshuffles a small set holds samples of the held-out batch again: those rows are dropped from it
(matched by value), or the held-out loss would reward the rates that memorise fastest.
Under ``torchrun`` each step's batch is several of the rank's own batches joined: the batch
DDP's averaged gradient is for, so the rates judged are the rates for that run.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from nandoctor.batches import iter_tensors, join_batches, map_tensors, to_device
from nandoctor.distributed import world_size
from nandoctor.errors import describe


class BatchStream:
    """``train(step)`` is the batch of that step, the same for every rate; ``heldout`` is never trained on.

    Under ``torchrun`` a step's batch is ``group`` of the rank's own batches joined (see
    :func:`rank_group`): the batch the rates are for when DDP averages every rank's gradient.
    """

    def __init__(self, ctx: Any, limit: int):
        self.group, self.group_note = rank_group(ctx)
        self._device = ctx.setup.device
        self._fresh = None if len(ctx.batches) < ctx.settings.batches else ctx.setup.data
        self._skip = len(ctx.batches)
        self.fresh_read = 0
        self._pending: list[tuple[int, Any]] = []  # batches read but not yet joined into a step's batch
        cached = list(ctx.batches)
        if self.group > 1:
            cached = self._joined_cache(ctx, cached)
        self.heldout = cached[-1:] if len(cached) > 1 else []
        self._train = cached[:-1] if len(cached) > 1 else cached
        self._indices = [i * self.group for i in range(len(self._train))]  # each batch's (first) index in ``data``
        self._limit = max(limit, len(self._train))
        self._held_keys = set(sample_keys(self.heldout[0]) or []) if self.heldout else set()
        self.heldout_rows_dropped = 0  # rows of fresh batches that were samples of the held-out batch

    def _joined_cache(self, ctx: Any, cached: list[Any]) -> list[Any]:
        """The cached batches joined ``group`` at a time (read more from ``data`` for one to train on and
        one to hold out); as they are, with ``group`` 1 and the reason, when they cannot be joined."""
        group = self.group
        if len(cached) < 2 * group:
            cached += [to_device(b, self._device) for _, b in self._fresh_batches(2 * group - len(cached))]
        whole = len(cached) // group * group
        try:
            if whole < 2 * group:
                raise ValueError(f"the data holds only {len(cached)} batch(es) for this rank")
            joined = [join_batches(cached[i : i + group]) for i in range(0, whole, group)]
            from nandoctor.step import score

            score(ctx.setup, joined[-1:])  # a loss that needs the per-rank batch size raises here
        except Exception as exc:  # the rates stay judged on one rank's batch, and the report says why
            self.group, self.group_note = 1, f"one rank's batch: its batches cannot be joined ({describe(exc)})"
            self._pending = []
            return list(ctx.batches)
        self._pending = [(index, cached[index]) for index in range(whole, len(cached))]
        return joined

    def _fresh_batches(self, count: int) -> list[tuple[int, Any]]:
        """Up to ``count`` more (index in ``data``, batch) from a fresh iterator over ``data``; fewer
        (none) when it ends."""
        if self._fresh is None or count <= 0:
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
        first = self._skip + self.fresh_read
        self.fresh_read += len(batches)
        if len(batches) < count:
            self._fresh = None
        return list(zip(range(first, first + len(batches)), batches))

    def _read_more(self, count: int) -> None:
        """Read ``count`` more steps' batches from ``data``; stop quietly when it ends."""
        pending = self._pending + self._fresh_batches(count * self.group - len(self._pending))
        whole = len(pending) // self.group * self.group
        self._pending = pending[whole:]
        for start in range(0, whole, self.group):
            pieces = [self._without_heldout(b) for _, b in pending[start : start + self.group]]
            try:
                batch = join_batches(pieces) if self.group > 1 else pieces[0]
            except ValueError:  # a fresh batch that does not join (a last, shorter one): the stream ends here
                self._fresh, self._pending = None, []
                return
            self._indices.append(pending[start][0])
            self._train.append(to_device(batch, self._device))

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
        if step >= len(self._train) and len(self._train) < self._limit:
            self._read_more(min(max(step + 1 - len(self._train), 8), self._limit - len(self._train)))
        return self._train[step % len(self._train)]

    def data_index(self, step: int) -> int:
        """The index in ``data`` of the batch step ``step`` trains on (call after ``train(step)``)."""
        return self._indices[step % len(self._train)]

    @property
    def distinct(self) -> int:
        return len(self._train)


def rank_group(ctx: Any) -> tuple[int, str | None]:
    """How many of this rank's batches one sweep step joins, and the note that says so: under
    ``torchrun``, DDP averages the gradients of every rank's batch, so the rates a sweep judges are
    for a batch the world size times one rank's (``sweep_rank_batches`` sets another); joining the
    rank's own batches makes that batch with no collective inside the sweep (every rank's sweep
    runs alone, see :mod:`nandoctor.distributed`). 1, with no note, in one process."""
    ranks = world_size()
    if ranks == 1:
        return 1, None
    group = ctx.settings.sweep_rank_batches or ranks
    if group == 1:
        return 1, "one rank's batch (sweep_rank_batches: 1)"
    return group, (
        f"{group} of a rank's batches joined per step, the batch DDP's averaged gradient over {ranks} ranks is for"
    )


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
