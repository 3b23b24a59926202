"""``nandoctor scan``: every batch of ``data`` through the model and loss; the bad ones by index.

Per batch, on the device: each float input's per-sample largest |value| (NaN/Inf and extreme
values), the ids reaching every embedding and the targets reaching every cross-entropy/NLL
loss (intercepted with a TorchFunctionMode, checked against the table size / class count, the
targets by measure/labels.py as the traced pass reads them, and replaced by safe ones, so a bad
id never hits a CUDA device assert), and the loss itself. The queued values are read back every
few batches in one synchronisation. A bad id or target is traced to its sample through the
batch tensor that shares its storage; a non-finite loss with clean inputs is traced by
re-running the batch's samples one at a time.
"""

from __future__ import annotations

import inspect
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nandoctor.batches import iter_tensors, loader_error, to_device
from nandoctor.distributed import gather, rank, world_size
from nandoctor.errors import UsageError, describe
from nandoctor.findings import Finding, Fix, Severity, Where
from nandoctor.loss import compute_loss
from nandoctor.measure.labels import LossTargets, loss_targets

READ_BACK_EVERY = 8  # batches whose device-side checks are read back together
MAX_LISTED = 1000  # problems listed one by one; the findings count all of them


@dataclass
class Problem:
    """One bad sample (or batch, when ``sample`` is None)."""

    code: str
    batch: int
    sample: int | None
    tensor: str | None
    detail: str
    dataset_index: int | None = None


@dataclass
class _Queued:
    """One batch's device-side checks, waiting for the next read-back."""

    index: int
    batch: Any
    size: int | None
    floats: list[tuple[str, Any]] = field(default_factory=list)  # path, per-sample largest |value|
    lookups: list[tuple[str, str | None, int, Any, Any]] = field(
        default_factory=list
    )  # code, path, limit, count, per-sample
    loss: Any = None
    grad_ok: Any = None
    error: str | None = None


class _Lookups:
    """Intercepts embeddings and classification losses; checks and makes safe their ids / targets."""

    def __init__(self, batch: Any, queued: _Queued):
        import torch
        from torch.nn import functional as F
        from torch.overrides import TorchFunctionMode

        self.torch, self.queued = torch, queued
        self.sources = {
            t.untyped_storage().data_ptr(): (path, t)
            for path, t in iter_tensors(batch)
            if not t.is_floating_point() and t.numel()
        }
        self.embedding = (F.embedding, inspect.signature(F.embedding))
        outer = self

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                if func is outer.embedding[0]:
                    args, kwargs = outer.check_ids(args, kwargs)
                else:
                    targets = loss_targets(func, args, kwargs)
                    if targets is not None:
                        args, kwargs = outer.check_labels(targets)
                return func(*args, **kwargs)

        self.mode = Mode()

    def check_ids(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        bound = self.embedding[1].bind(*args, **kwargs)
        ids = bound.arguments.get("input")
        if not isinstance(ids, self.torch.Tensor) or ids.is_floating_point() or not ids.numel():
            return args, kwargs
        limit = int(bound.arguments["weight"].shape[0])
        bound.arguments["input"] = self._queue("index_out_of_range", ids, limit, lambda t: (t < 0) | (t >= limit))
        return bound.args, bound.kwargs

    def check_labels(self, targets: LossTargets) -> tuple[tuple, dict]:
        return targets.with_target(self._queue("label_out_of_range", targets.target, targets.classes, targets.outside))

    def _queue(self, code: str, values: Any, limit: int, bad_of: Callable[[Any], Any]) -> Any:
        """Queue the count of bad values (and which samples hold them); the values made safe."""
        bad = bad_of(values)
        path, source = self.sources.get(values.untyped_storage().data_ptr(), (None, None))
        per_sample = None
        if source is not None and source.dim() and self.queued.size and source.shape[0] == self.queued.size:
            per_sample = bad_of(source).reshape(source.shape[0], -1).any(1)
        self.queued.lookups.append((code, path, limit, bad.sum(), per_sample))
        return self.torch.where(bad, self.torch.zeros_like(values), values)  # safe: never a device assert


def batch_size(batch: Any) -> int | None:
    """The leading dimension most of the batch's tensors share."""
    sizes = [t.shape[0] for _, t in iter_tensors(batch) if t.dim()]
    return statistics.mode(sizes) if sizes else None


def _check_batch(setup: Any, index: int, batch: Any, with_backward: bool) -> _Queued:
    import torch

    queued = _Queued(index=index, batch=batch, size=batch_size(batch))
    with torch.no_grad():
        for path, tensor in iter_tensors(batch):
            if tensor.is_floating_point() and tensor.numel() and tensor.dim() and tensor.shape[0] == queued.size:
                low, high = torch.aminmax(tensor.detach().reshape(tensor.shape[0], -1).float(), dim=1)
                queued.floats.append((path, torch.maximum(low.abs(), high.abs())))
    lookups = _Lookups(batch, queued)
    try:
        with torch.set_grad_enabled(with_backward), lookups.mode:
            loss = compute_loss(setup, setup.model, batch).total
        queued.loss = loss.detach().float().reshape(())
        if with_backward and loss.requires_grad:
            setup.model.zero_grad(set_to_none=True)
            loss.backward()
            grads = [p.grad for p in setup.model.parameters() if p.grad is not None]
            queued.grad_ok = torch.stack([torch.isfinite(g).all() for g in grads]).all() if grads else None
    except UsageError:
        raise
    except Exception as exc:  # the user's forward raised on this batch: a finding, and on to the next
        queued.error = describe(exc)[:300]
    return queued


def _read_back(queue: list[_Queued]) -> list[list[Any]]:
    """Every queued device value of these batches in one ``tolist()``."""
    import torch

    parts = []
    for q in queue:
        parts += [v for _, v in q.floats]
        parts += [t for _, _, _, count, per_sample in q.lookups for t in (count, per_sample) if t is not None]
        parts += [t for t in (q.loss, q.grad_ok) if t is not None]
    if not parts:
        return [[] for _ in queue]
    device = parts[0].device
    flat = iter(torch.cat([p.detach().float().reshape(-1).to(device) for p in parts]).tolist())
    out = []
    for q in queue:
        values = [[next(flat) for _ in range(v.numel())] for _, v in q.floats]
        values += [
            [next(flat) for _ in range(t.numel())]
            for _, _, _, count, per_sample in q.lookups
            for t in (count, per_sample)
            if t is not None
        ]
        values += [next(flat) for t in (q.loss, q.grad_ok) if t is not None]
        out.append(values)
    return out


class Scanner:
    """Runs the batches, keeps the problems, and the per-input reference scale for extreme values."""

    def __init__(self, setup: Any, extreme_factor: float, with_backward: bool):
        self.setup, self.extreme_factor, self.with_backward = setup, extreme_factor, with_backward
        self.problems: list[Problem] = []
        self.batch_medians: dict[str, list[float]] = {}
        self.samples = 0
        self.loader_batch_size = _plain_batch_size(setup.data)

    def judge(self, queue: list[_Queued]) -> None:
        for q, values in zip(queue, _read_back(queue)):
            self.samples += q.size or 0
            values = iter(values)
            before = len(self.problems)
            for path, _ in q.floats:
                self._floats(q, path, next(values))
            for code, path, limit, _, per_sample in q.lookups:
                count = next(values)[0]
                samples = next(values) if per_sample is not None else None
                if count:
                    hit = [i for i, flag in enumerate(samples) if flag] if samples else [None]
                    for sample in hit:
                        self._add(code, q.index, sample, path, f"{int(count)} value(s) outside 0..{limit - 1}")
            loss = next(values) if q.loss is not None else None
            grad_ok = next(values) if q.grad_ok is not None else None
            if q.error is not None:
                self._add("forward_error", q.index, None, None, q.error)
            elif len(self.problems) == before and loss is not None and not math.isfinite(loss):
                for sample in self._nonfinite_samples(q):
                    self._add("forward_nonfinite", q.index, sample, None, f"the loss is {loss} with finite inputs")
            elif len(self.problems) == before and grad_ok is not None and grad_ok < 0.5:
                self._add("backward_nonfinite", q.index, None, None, "a gradient is NaN/Inf with a finite loss")

    def _floats(self, q: _Queued, path: str, absmax: list[float]) -> None:
        finite = [v for v in absmax if math.isfinite(v)]
        if finite:
            self.batch_medians.setdefault(path, []).append(statistics.median(finite))
        reference = statistics.median(self.batch_medians.get(path) or [0.0])
        for sample, value in enumerate(absmax):
            if not math.isfinite(value):
                self._add("nonfinite_input", q.index, sample, path, f"{path} holds {value}")
            elif reference > 0 and value > self.extreme_factor * reference:
                self._add(
                    "unnormalized_input",
                    q.index,
                    sample,
                    path,
                    f"{path} reaches {value:.4g}, {value / reference:,.0f}x the typical largest value {reference:.4g}",
                )

    def _nonfinite_samples(self, q: _Queued) -> list[int | None]:
        """The samples whose loss alone is non-finite (one forward each), or [None] when that cannot tell."""
        import torch

        size = q.size
        if not size or size > 1024:
            return [None]
        found = []
        try:
            with torch.no_grad():
                for sample in range(size):
                    one = _take(q.batch, sample, size)
                    if not torch.isfinite(compute_loss(self.setup, self.setup.model, one).total).all():
                        found.append(sample)
        except Exception:  # one sample cannot go through alone (batch norm): name the batch only
            return [None]
        return found or [None]

    def _add(self, code: str, batch: int, sample: int | None, tensor: str | None, detail: str) -> None:
        size = self.loader_batch_size
        dataset_index = batch * size + sample if size and sample is not None else None
        self.problems.append(Problem(code, batch, sample, tensor, detail, dataset_index))


def _take(batch: Any, sample: int, size: int) -> Any:
    from nandoctor.batches import map_tensors

    return map_tensors(batch, lambda t: t[sample : sample + 1] if t.dim() and t.shape[0] == size else t)


def _plain_batch_size(data: Any) -> int | None:
    """Batch size of a DataLoader that reads its dataset in order (the dataset index is then known)."""
    try:
        from torch.utils.data import DataLoader, SequentialSampler
    except ImportError:
        return None
    if isinstance(data, DataLoader) and isinstance(data.sampler, SequentialSampler) and data.batch_size:
        return int(data.batch_size)
    return None


def _share(data: Any) -> tuple[int, int]:
    """(stride, offset): under torchrun each rank checks every world-size-th batch, so every batch is
    checked once; a loader the user already shards per rank (a ``DistributedSampler``) is read whole."""
    if world_size() == 1:
        return 1, 0
    sampler = getattr(data, "sampler", None)
    if type(sampler).__name__ == "DistributedSampler":
        return 1, 0
    return world_size(), rank()


def run_scan(
    setup: Any,
    max_batches: int | None,
    with_backward: bool,
    extreme_factor: float,
    progress: Callable[[int, int | None, bool], None],
) -> dict[str, Any]:
    """Scan the batches; Ctrl-C stops it and keeps what was found (``interrupted``)."""
    from nandoctor.runner import batches_total, on_device
    from nandoctor.state import preserved_everything

    total = batches_total(setup.data)
    if max_batches is not None:
        total = min(total, max_batches) if total is not None else max_batches
    scanner = Scanner(setup, extreme_factor, with_backward)
    scanned, interrupted, queue, stopped = 0, False, [], None
    stride, mine = _share(setup.data)
    index = 0  # of the batch in the whole data; this rank checks every stride-th one
    start = time.monotonic()
    with preserved_everything(setup.model), on_device(setup.model, setup.device):
        setup.model.train()
        try:
            iterator = iter(setup.data)
            while max_batches is None or index < max_batches:
                try:
                    batch = next(iterator)
                except StopIteration:
                    break
                except (Exception, SystemExit) as exc:  # the user's dataset raised: theirs, and the scan ends here
                    stopped = _data_error(setup.data, index, exc)
                    break
                index += 1
                if (index - 1) % stride != mine:  # another rank's batch
                    continue
                queue.append(_check_batch(setup, index - 1, to_device(batch, setup.device), with_backward))
                scanned += 1
                if len(queue) >= READ_BACK_EVERY:
                    full, queue = queue, []
                    scanner.judge(full)
                progress(scanned, total, False)
        except KeyboardInterrupt:
            interrupted = True
        scanner.judge(queue)
    problems, samples = scanner.problems, scanner.samples
    if world_size() > 1:  # every rank's part, gathered: every rank returns the same result
        parts = gather((scanned, samples, problems, stopped, interrupted))
        scanned, samples = sum(p[0] for p in parts), sum(p[1] for p in parts)
        problems = sorted((q for p in parts for q in p[2]), key=lambda q: (q.batch, q.sample is None, q.sample or 0))
        stopped = next((p[3] for p in parts if p[3] is not None), None)
        interrupted = any(p[4] for p in parts)
    seconds = time.monotonic() - start
    progress(scanned, total, True)
    return {
        "batches_scanned": scanned,
        "batches_total": total,
        "samples_scanned": samples,
        "ranks": world_size(),
        "seconds": seconds,
        "batches_per_s": scanned / seconds if seconds > 0 else None,
        "interrupted": interrupted,
        "stopped": stopped,
        "with_backward": with_backward,
        "findings": [f.to_dict() for f in findings_of(problems)],
        "problems": [vars(p) for p in problems[:MAX_LISTED]],
        "problems_total": len(problems),
    }


def _data_error(data: Any, batch: int, exc: BaseException) -> dict[str, Any]:
    """Where reading ``data`` raised: the batch, its dataset indices when the loader reads in order, the
    message (a DataLoader worker's own, with its line)."""
    size = _plain_batch_size(data)
    indices = [batch * size, (batch + 1) * size - 1] if size else None
    return {
        "batch": batch,
        "dataset_indices": indices,
        "error": loader_error(exc) if isinstance(exc, Exception) else f"the data loader called sys.exit({exc.code!r})",
    }


ADVICE = {
    "nonfinite_input": "Drop or impute these samples in the data pipeline; assert torch.isfinite on each batch.",
    "unnormalized_input": "Check these samples for a unit or parsing error (a sentinel like 1e9, raw counts); "
    "clip or normalise.",
    "index_out_of_range": "Remap these ids into the vocabulary or grow num_embeddings; "
    "on CUDA they crash with a device assert.",
    "label_out_of_range": "Fix these targets: they must lie in 0..classes-1 (or equal ignore_index).",
    "forward_nonfinite": "The loss of these samples is NaN/Inf with finite inputs: run nandoctor diagnose on them.",
    "backward_nonfinite": "A gradient turns NaN/Inf on these batches: run nandoctor diagnose on them.",
    "forward_error": "The forward raised on these batches: the message says why.",
}


def findings_of(problems: list[Problem]) -> list[Finding]:
    """One finding per code and input tensor, pointing at the first bad sample and listing the rest."""
    groups: dict[tuple[str, str | None], list[Problem]] = {}
    for problem in problems:
        groups.setdefault((problem.code, problem.tensor), []).append(problem)
    findings = []
    for (code, tensor), group in groups.items():
        first = group[0]
        batches = sorted({p.batch for p in group})
        where = f" in {tensor!r}" if tensor else ""
        findings.append(
            Finding(
                code,
                Severity.CRITICAL,
                f"{len(group)} bad sample(s){where} in {len(batches)} batch(es), first: batch {first.batch}"
                + (f", sample {first.sample}" if first.sample is not None else "")
                + f": {first.detail}",
                Where(feature=tensor, batch=first.batch, sample=first.sample),
                {
                    "count": len(group),
                    "batches": batches[:50],
                    "dataset_indices": [p.dataset_index for p in group if p.dataset_index is not None][:50],
                },
                Fix(advice=ADVICE[code]),
            )
        )
    return findings
