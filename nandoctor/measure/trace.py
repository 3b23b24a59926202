"""One traced forward + backward pass per batch, recorded as plain data.

Module hooks record each call's input and output range (min, max, RMS) as small tensors on
the device; they are stacked and read back with a single synchronisation per batch. Tensor
hooks on module outputs record, in backward order, whether the gradient reaching each
module's output is finite. Every hook lives in an ExitStack and is removed on the way out.
"""

from __future__ import annotations

import traceback
import weakref
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nandoctor.batches import iter_tensors
from nandoctor.errors import InternalError, UsageError, describe, first_line
from nandoctor.findings import Setting, is_finite
from nandoctor.measure.activity import Activity, ActivityRecorder
from nandoctor.measure.hooks import UserFacing, module_names, ours
from nandoctor.measure.labels import LabelRangeError, label_range_mode
from nandoctor.measure.ops import installed_package_of, user_source_of
from nandoctor.measure.stats import count_nonfinite, float_tensors, range_stats, rng_state
from nandoctor.measure.targets import loss_sign_records, release_loss_hooks

SETTINGS = (  # read by the probes that judge this pass's recordings
    Setting(
        "grad_norm_warning",
        1e3,
        "exploding_gradients: global gradient norm for a warning (and the least "
        "norm at which loss_component_explosion blames a component)",
    ),
    Setting(
        "saturation_derivative",
        0.01,
        "saturation: a tanh/sigmoid/softsign output counts as in the flat tail where its local derivative "
        "is below this fraction of the peak",
    ),
)


@dataclass
class ModuleCall:
    """One module call, in the order calls finished (children before their parents)."""

    name: str
    kind: str
    parent: str | None
    is_leaf: bool
    out_min: float | None = None
    out_max: float | None = None
    out_rms: float | None = None
    in_min: float | None = None
    in_max: float | None = None

    @property
    def output_finite(self) -> bool:
        return self.out_min is None or is_finite(self.out_min, self.out_max)

    @property
    def input_finite(self) -> bool:
        return self.in_min is None or is_finite(self.in_min, self.in_max)

    @property
    def out_absmax(self) -> float | None:
        return None if self.out_min is None else max(abs(self.out_min), abs(self.out_max))


@dataclass
class ForwardCrash:
    """The user's forward or loss raised; ``module`` is the innermost module running then."""

    module: str | None
    kind: str | None
    exc_type: str
    message: str
    location: str
    executed: list[str]
    embedding: dict[str, Any] | None = None
    source: str | None = None  # the user's line that called into the code that raised
    package: str | None = None  # the installed package it raised inside, if any
    stopped_by_check: bool = False  # our check stopped it before the op ran (re-running would really crash)
    labels: dict[str, Any] | None = None  # class targets outside the loss's range (measure/labels.py)


@dataclass
class BatchTrace:
    batch_index: int
    calls: list[ModuleCall] = field(default_factory=list)
    crash: ForwardCrash | None = None
    loss: float | None = None
    components: dict[str, float] = field(default_factory=dict)
    backward_error: str | None = None
    first_nonfinite_grad_call: int | None = None
    grad_norms: dict[str, float] = field(default_factory=dict)
    grad_numel: dict[str, int] = field(default_factory=dict)
    no_grad_params: list[str] = field(default_factory=list)
    culprit_counts: dict[str, int] | None = None
    consumed_paths: list[str] = field(default_factory=list)  # batch tensors that reached a child module
    root_width: int | None = None  # last dimension of the root module's first float output (classes)
    activity: Activity | None = None  # outputs at a bound, fired ReLU units (measure/activity.py)
    loss_checks: list[dict[str, Any]] = field(default_factory=list)  # targets vs their loss (measure/targets.py)

    @property
    def forward_finite(self) -> bool:
        return self.crash is None and all(c.output_finite for c in self.calls) and is_finite(self.loss)

    @property
    def backward_finite(self) -> bool:
        import math

        return self.first_nonfinite_grad_call is None and all(math.isfinite(v) for v in self.grad_norms.values())


class EmbeddingIndexError(UserFacing):
    """Raised by our pre-hook before an embedding sees ids it would crash on (CUDA asserts kill the process)."""

    def __init__(self, details: dict[str, Any]):
        super().__init__(
            f"ids {details['min_id']}..{details['max_id']} outside num_embeddings={details['num_embeddings']}"
        )
        self.details = details


class _Recorder:
    """The hooks of one traced pass; they only queue device tensors, never synchronise."""

    def __init__(self, model: Any, tail_derivative: float = 0.01):
        import torch

        self.torch = torch
        self.names = module_names(model)
        self.leaves = {id(m) for m in model.modules() if next(m.children(), None) is None}
        self.stack: list[tuple[str, Any]] = []  # (name, input stats or None)
        self.calls: list[ModuleCall] = []
        self.out_stats: list[Any] = []  # per call: stats tensor or None
        self.in_stats: list[Any] = []
        self.numel: list[int] = []
        # id(output) -> (weak reference, version, stats): outputs are not held (memory), only
        # their statistics, reused when the same tensor is the next module's input
        self.memo: dict[int, tuple[Any, int, Any]] = {}
        self.grad_events: list[tuple[int, Any]] = []
        self.root_width: int | None = None
        self.consumed: set[int] = set()  # ids of tensors some child module received as input
        self.batch_paths: dict[int, tuple[str, Any]] = {}  # id(batch tensor) -> (path, tensor)
        self.activity = ActivityRecorder(tail_derivative)
        self.handles = ExitStack()

    def install(self, model: Any) -> "_Recorder":
        for module in model.modules():
            self.handles.enter_context(module.register_forward_pre_hook(ours(self.pre_hook), with_kwargs=True))
            self.handles.enter_context(module.register_forward_hook(ours(self.post_hook), with_kwargs=True))
        return self

    def _stats(self, tensors: list[Any]):
        """Reuse the stats of a tensor already measured (a previous module's output)."""
        if not tensors:
            return None
        if len(tensors) == 1:
            cached = self.memo.get(id(tensors[0]))
            if cached is not None and cached[0]() is tensors[0] and cached[1] == tensors[0]._version:
                return cached[2]
        return range_stats(tensors)

    def pre_hook(self, module: Any, args: tuple, kwargs: dict) -> None:
        name = self.names.get(id(module), type(module).__name__)
        if self.stack:  # the root receives the whole batch; what its children receive is input
            self.consumed.update(id(t) for _, t in iter_tensors((args, kwargs)))
        if isinstance(module, (self.torch.nn.Embedding, self.torch.nn.EmbeddingBag)):
            self._check_ids(module, name, args, kwargs)
        self.stack.append((name, self._stats(float_tensors((args, kwargs)))))

    def post_hook(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        name, in_stats = self.stack.pop()
        outputs = float_tensors(output)
        stats = range_stats(outputs) if outputs else None
        if len(outputs) == 1:
            self.memo[id(outputs[0])] = (weakref.ref(outputs[0]), outputs[0]._version, stats)
        index = len(self.calls)
        self.calls.append(
            ModuleCall(
                name=name,
                kind=type(module).__name__,
                parent=self.stack[-1][0] if self.stack else None,
                is_leaf=id(module) in self.leaves,
            )
        )
        self.out_stats.append(stats)
        self.in_stats.append(in_stats)
        self.numel.append(sum(t.numel() for t in outputs))
        if not self.stack and outputs and outputs[0].dim():
            self.root_width = int(outputs[0].shape[-1])
        if outputs:
            self.activity.record(name, module, outputs[0], stats)
        for tensor in outputs:
            if tensor.requires_grad:
                self.handles.enter_context(tensor.register_hook(ours(self._grad_hook(index))))

    def _grad_hook(self, index: int):
        def record(grad):
            if grad is not None:
                with self.torch.no_grad():  # a sum is NaN/Inf when any element is: one read, no copy
                    self.grad_events.append((index, self.torch.isfinite(grad.sum(dtype=self.torch.float32))))

        return record

    def _check_ids(self, module: Any, name: str, args: tuple, kwargs: dict) -> None:
        ids = args[0] if args else kwargs.get("input")
        if not isinstance(ids, self.torch.Tensor) or ids.is_floating_point() or ids.numel() == 0:
            return
        low, high = (int(v) for v in self.torch.aminmax(ids.detach()))  # one sync per embedding call
        size = module.num_embeddings
        if low < 0 or high >= size:
            bad = int(((ids < 0) | (ids >= size)).sum())
            raise EmbeddingIndexError(
                {
                    "num_embeddings": size,
                    "min_id": low,
                    "max_id": high,
                    "out_of_range": bad,
                    "total": int(ids.numel()),
                    "module": name,
                    "tensor": self.batch_paths.get(id(ids), (None,))[0],
                }
            )


_OWN_CODE = str(Path(__file__).parent)
_EXAMPLES = str(Path(__file__).parent / "examples")


def _is_user_frame(filename: str) -> bool:
    if "torch" in Path(filename).parts:
        return False
    return not filename.startswith(_OWN_CODE) or filename.startswith(_EXAMPLES)


def _consumed_paths(batch: Any, recorder: _Recorder) -> list[str]:
    return [path for path, tensor in iter_tensors(batch) if id(tensor) in recorder.consumed]


def _user_location(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if _is_user_frame(f.filename)]
    frame = frames[-1] if frames else (traceback.extract_tb(exc.__traceback__) or [None])[-1]
    return f"{frame.filename}:{frame.lineno}" if frame else "?"


def _crash(recorder: _Recorder, exc: BaseException, module_kinds: dict[str, str]) -> ForwardCrash:
    module = recorder.stack[-1][0] if recorder.stack else None
    if isinstance(exc, EmbeddingIndexError):  # raised by our pre-hook, before the embedding ran
        module = exc.details["module"]
    labels = exc.details if isinstance(exc, LabelRangeError) else None  # raised before the loss ran
    message = first_line(exc)
    embedding = exc.details if isinstance(exc, EmbeddingIndexError) else None
    return ForwardCrash(
        module=module,
        kind=module_kinds.get(module) if module is not None else None,
        exc_type="IndexError" if embedding else type(exc).__name__,
        message=message[:500],
        location=_user_location(exc),
        executed=[c.name for c in recorder.calls[-5:]],
        embedding=embedding,
        labels=labels,
        source=user_source_of(exc),
        package=installed_package_of(exc),
        stopped_by_check=isinstance(exc, UserFacing),
    )


def _grad_norms(model: Any) -> tuple[list[str], list[Any], list[int], list[str]]:
    names, grads, numel, missing = [], [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.grad is None:
            missing.append(name)
            continue
        grad = param.grad.coalesce().values() if param.grad.is_sparse else param.grad
        names.append(name)
        grads.append(grad)
        numel.append(param.numel())
    return names, grads, numel, missing


def trace_batch(ctx: Any, batch_index: int) -> BatchTrace:
    """Forward + backward on one cached batch; one synchronisation for all its statistics."""
    model, batch = ctx.model, ctx.batches[batch_index]
    result = BatchTrace(batch_index=batch_index)
    kinds = {name: type(m).__name__ for name, m in model.named_modules()}
    for param in model.parameters():
        param.grad = None
    rng = rng_state(batch)
    recorder = _Recorder(model, ctx.settings.saturation_derivative)
    recorder.batch_paths = {id(t): (path, t) for path, t in iter_tensors(batch)}
    with recorder.handles:
        recorder.install(model)
        # class targets are range-checked, every loss's targets recorded (result.loss_checks)
        watched: list = []  # loss outputs hooked for their sign, read back with the other statistics
        recorder.handles.callback(ours(release_loss_hooks), watched)
        recorder.handles.enter_context(label_range_mode(recorder.batch_paths, result.loss_checks, watched))
        try:
            loss = ctx.loss(batch)
        except (UsageError, InternalError):
            raise
        except Exception as exc:  # the user's forward crashed: that is a finding, not our crash
            result.crash = _crash(recorder, exc, kinds)
            result.calls = recorder.calls
            result.consumed_paths = _consumed_paths(batch, recorder)
            return result
        result.consumed_paths = _consumed_paths(batch, recorder)
        try:
            if loss.total.requires_grad:
                loss.total.backward()
            else:
                result.backward_error = "the loss does not require grad: it depends on no trainable parameter"
        except InternalError:
            raise
        except Exception as exc:
            result.backward_error = describe(exc)
    _read_back(result, recorder, loss, model, watched)
    culprit = next((i for i, c in enumerate(result.calls) if not c.output_finite), None)
    if culprit is not None:
        del loss, recorder  # free this pass's graph before the recount
        result.culprit_counts = count_nonfinite(ctx, batch_index, culprit, rng)
    return result


def _read_back(result: BatchTrace, recorder: _Recorder, loss: Any, model: Any, watched: list) -> None:
    """The single synchronisation: every queued statistic comes back in one ``tolist()``."""
    import torch

    names, grads, numel, missing = _grad_norms(model)
    device = loss.total.device
    parts = [loss.total.detach().float().reshape(1)]
    parts += [c.detach().float().reshape(1) for c in loss.components.values()]
    nan3 = torch.full((3,), float("nan"), device=device)
    parts += [(s if s is not None else nan3).to(device) for s in recorder.out_stats]
    parts += [(s if s is not None else nan3).to(device) for s in recorder.in_stats]
    parts += [flag.float().reshape(1).to(device) for _, flag in recorder.grad_events]
    reached = [entry for entry in watched if entry["grad"] is not None]  # loss calls the backward reached
    parts += [entry["grad"].reshape(1).to(device) for entry in reached]
    parts += [row.to(device) for row in recorder.activity.queued]
    if grads:
        norms = torch._foreach_norm(grads) if hasattr(torch, "_foreach_norm") else [g.norm() for g in grads]
        parts += [n.float().reshape(1).to(device) for n in norms]
    values = torch.cat([p.reshape(-1) for p in parts]).tolist()
    result.loss = values.pop(0)
    result.components = {k: values.pop(0) for k in loss.components}
    calls = recorder.calls
    out = [values.pop(0) for _ in range(3 * len(calls))]
    inp = [values.pop(0) for _ in range(3 * len(calls))]
    _set_output_stats(recorder, out)
    for i, call in enumerate(calls):
        if recorder.in_stats[i] is not None:
            call.in_min, call.in_max = inp[3 * i], inp[3 * i + 1]
    for index, _ in recorder.grad_events:
        if values.pop(0) < 0.5 and result.first_nonfinite_grad_call is None:
            result.first_nonfinite_grad_call = index
    result.loss_checks += loss_sign_records(reached, [values.pop(0) for _ in reached])
    result.activity = recorder.activity.fill(values)
    result.grad_norms = dict(zip(names, values))
    result.grad_numel = dict(zip(names, numel))
    result.no_grad_params = missing
    result.root_width = recorder.root_width
    result.calls = calls


def _set_output_stats(recorder: _Recorder, flat: list[float]) -> None:
    """Fill each call's output range from ``[min, max, norm] * calls`` read back from the device."""
    for i, call in enumerate(recorder.calls):
        if recorder.out_stats[i] is not None:
            call.out_min, call.out_max = flat[3 * i], flat[3 * i + 1]
            call.out_rms = flat[3 * i + 2] / max(recorder.numel[i], 1) ** 0.5


def trace_batches(ctx: Any) -> list[BatchTrace]:
    """Trace the cached batches in order, stopping at the first that fails."""
    traces = []
    for index in range(len(ctx.batches)):
        trace = trace_batch(ctx, index)
        traces.append(trace)
        if trace.crash or not trace.forward_finite or not trace.backward_finite or trace.backward_error:
            break
    return traces


def traced(ctx: Any) -> list[BatchTrace]:
    """The shared recording: traced once per run, read by every probe that needs it."""
    return ctx.recording("trace", trace_batches)
