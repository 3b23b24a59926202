"""The op-level pass: which torch op made the NaN/Inf, inside which module, called from which user line.

It runs only after the cheap traced pass saw a failure (a non-finite forward or loss, a crash,
a difference under autocast), so a healthy model never pays for it. The user's loss runs once
more under a ``TorchDispatchMode``, which sees every aten op after autocast's casts (a float16
overflow is seen in the op where it happens, wherever the op is: a module, the code between
modules, the loss function). Per op it queues on the device whether each float input and output
is finite and NaN-free, and reads them back once at the end. The origin is found by walking back
from the non-finite loss through the ops that produced its non-finite inputs, to the op that
made non-finite values from finite ones. A value that is non-finite on purpose (a ``-inf`` mask
buffer, ``masked_fill(mask, -inf)``) ends the walk; then the op that turned it into NaN is named.

Naming: ``where.op`` is the aten operator without its overload, as ``torch.ops`` spells it
(``aten::div``, ``aten::log``; ``aten::_to_copy`` is a cast, under autocast the cast to float16),
for findings about values; findings about gradients name the autograd node (``SqrtBackward0``),
and :func:`node_sources` tags each node with the user's line that created it. ``where.source`` is
the innermost frame that is the user's: not inside torch, nandoctor or any installed package.
"""

from __future__ import annotations

import math
import os
import sys
import sysconfig
import traceback
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from nandoctor.errors import InternalError, UsageError, describe
from nandoctor.measure.hooks import module_names, ours, tag_graph

_OWN_CODE = str(Path(__file__).parents[1])
_EXAMPLES = str(Path(__file__).parents[1] / "examples")
_INSTALLED = ("site-packages", "dist-packages")
SOURCE_KEY = "nandoctor_source"  # autograd node metadata: the user's line that created the node


# --- whose code a frame is --------------------------------------------------------------------


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


@lru_cache(maxsize=4096)
def is_user_file(filename: str) -> bool:
    """Not torch, not nandoctor (its examples excepted), not the standard library, not installed."""
    import torch

    if filename.startswith("<"):  # <frozen ...>, <string>: nothing a person can open
        return False
    path = os.path.abspath(filename)
    if any(part in _INSTALLED for part in Path(path).parts):
        return False
    if _inside(path, os.path.dirname(torch.__file__)):
        return False
    if _inside(path, _OWN_CODE) and not _inside(path, _EXAMPLES):
        return False
    stdlib = {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib")}
    return not any(_inside(path, os.path.abspath(folder)) for folder in stdlib)


def shown(filename: str, line: int) -> str:
    """``file.py:line``, relative to the working directory when the file is inside it."""
    path = os.path.abspath(filename)
    here = os.getcwd()
    return f"{os.path.relpath(path, here) if _inside(path, here) else path}:{line}"


def user_source() -> str | None:
    """The innermost user frame on the current stack, as ``file.py:line``."""
    frame = sys._getframe(1)
    while frame is not None:
        if is_user_file(frame.f_code.co_filename):
            return shown(frame.f_code.co_filename, frame.f_lineno)
        frame = frame.f_back
    return None


def user_source_of(exc: BaseException) -> str | None:
    """The innermost user frame of an exception's traceback (where the user's code called in)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if is_user_file(f.filename)]
    return shown(frames[-1].filename, frames[-1].lineno) if frames else None


def installed_package_of(exc: BaseException) -> str | None:
    """The installed package (other than torch) the user's code called into before the error."""
    frames = traceback.extract_tb(exc.__traceback__)
    users = [i for i, f in enumerate(frames) if is_user_file(f.filename)]
    for frame in frames[users[-1] + 1 if users else 0 :]:
        parts = Path(frame.filename).parts
        marks = [i for i, part in enumerate(parts) if part in _INSTALLED]
        if marks and marks[-1] + 1 < len(parts) and Path(parts[marks[-1] + 1]).stem != "torch":
            return Path(parts[marks[-1] + 1]).stem
    return None


# --- the pass's plain-data result -----------------------------------------------------------


@dataclass
class OpSite:
    """One op: its aten name, the module running it (None: outside the model), the user's line."""

    op: str
    module: str | None
    source: str | None
    dtype: str | None = None
    made: str | None = None  # "nan" or "inf": what the op's output holds


@dataclass
class OpPass:
    """What the op-level pass found on one batch."""

    batch: int
    autocast: str | None
    ops_seen: int = 0
    site: OpSite | None = None  # where the non-finite values were made
    crash: OpSite | None = None  # the op that raised, when one did
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_raw(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Op:
    name: str
    module: str | None
    source: str | None
    dtype: str
    inputs: list[int]  # flag indices of its float inputs
    producers: list[int | None]  # the recorded op that made each input (None: a leaf or constant)
    outputs: list[int]  # flag indices of its float outputs
    scalar_nonfinite: bool  # a Python float argument is Inf/NaN (a fill with -inf)


def _checkable(value: Any) -> bool:
    import torch

    return (
        isinstance(value, torch.Tensor)
        and (value.is_floating_point() or value.is_complex())
        and value.layout == torch.strided
        and value.device.type != "meta"
        and value.numel() > 0
    )


class _Watch:
    """The bookkeeping behind the dispatch mode: records per op, flags queued on the device."""

    def __init__(self, model: Any):
        self.names = module_names(model)
        self.running: list[str] = []
        self.ops: list[_Op] = []
        self.flags: list[Any] = []  # per tensor: [all finite, no NaN], on its device
        self.flag_of: dict[int, int] = {}
        self.producer: dict[int, int] = {}
        self.alive: list[Any] = []  # every tensor seen stays alive, so ids stay unique
        self.crash: OpSite | None = None

    def hooks(self, model: Any) -> ExitStack:
        stack = ExitStack()
        for module in model.modules():
            stack.enter_context(module.register_forward_pre_hook(ours(self._enter)))
            stack.enter_context(module.register_forward_hook(ours(self._leave)))
        return stack

    def _enter(self, module: Any, args: Any) -> None:
        self.running.append(self.names.get(id(module), type(module).__name__))

    def _leave(self, module: Any, args: Any, output: Any) -> None:
        if self.running:
            self.running.pop()

    def _flag(self, tensor: Any) -> int:
        import torch

        index = self.flag_of.get(id(tensor))
        if index is None:
            self.flags.append(torch.stack([torch.isfinite(tensor).all(), ~torch.isnan(tensor).any()]))
            self.alive.append(tensor)
            index = self.flag_of[id(tensor)] = len(self.flags) - 1
        return index

    def before(self, leaves: list[Any]) -> tuple[list[int], list[int | None], bool]:
        tensors = [t for t in leaves if _checkable(t)]
        scalar = any(isinstance(v, float) and not math.isfinite(v) for v in leaves)
        return [self._flag(t) for t in tensors], [self.producer.get(id(t)) for t in tensors], scalar

    def after(self, name: str, inputs: tuple, output_leaves: list[Any]) -> None:
        outputs = [t for t in output_leaves if _checkable(t)]
        if not outputs:
            return
        for tensor in outputs:  # an in-place op's output replaces its input's flag
            self.flag_of.pop(id(tensor), None)
        flags = [self._flag(t) for t in outputs]
        for tensor in outputs:
            self.producer[id(tensor)] = len(self.ops)
        self.ops.append(
            _Op(
                name,
                self.running[-1] if self.running else None,
                user_source(),
                str(outputs[0].dtype).replace("torch.", ""),
                *inputs[:2],
                flags,
                inputs[2],
            )
        )

    def failed(self, name: str) -> None:
        if self.crash is None:
            self.crash = OpSite(name, self.running[-1] if self.running else None, user_source())


@lru_cache(maxsize=1)
def _dispatch_mode_class() -> type:
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class OpWatch(TorchDispatchMode):
        """Every aten op: flags before and after; the op that raises is remembered, then re-raised."""

        def __init__(self, watch: _Watch):
            super().__init__()
            self.watch = watch

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = func._schema.name
            inputs = ours(self.watch.before)(tree_leaves((args, kwargs)))
            try:
                out = func(*args, **kwargs)
            except Exception:
                ours(self.watch.failed)(name)
                raise
            ours(self.watch.after)(name, inputs, tree_leaves(out))
            return out

    return OpWatch


def _origin(ops: list[_Op], values: list[list[bool]], start: int) -> tuple[int, str]:
    """Walk back from op ``start`` (non-finite output) to the op that made the non-finite values."""
    index, nan_maker = start, None
    while True:
        op = ops[index]
        out_nan = any(not values[f][1] for f in op.outputs)
        bad = [(p, values[f][1]) for f, p in zip(op.inputs, op.producers) if not values[f][0]]
        nan_inputs = [p for p, nan_free in bad if not nan_free]
        if out_nan and not nan_inputs and nan_maker is None:
            nan_maker = index  # NaN made here, from Inf or finite values
        if not bad and not op.scalar_nonfinite:
            return index, "nan" if out_nan else "inf"
        follow = nan_inputs if out_nan and nan_inputs else [p for p, _ in bad]
        previous = next((p for p in follow if p is not None), None)
        if previous is None:  # non-finite on purpose (a -inf mask): name the op that made NaN of it
            return (nan_maker, "nan") if nan_maker is not None else (index, "nan" if out_nan else "inf")
        index = previous


def _first_made(ops: list[_Op], values: list[list[bool]]) -> tuple[int, str] | None:
    """Without a non-finite loss to walk back from: the first op making Inf/NaN from finite inputs."""
    for index, op in enumerate(ops):
        finite_in = all(values[f][0] for f in op.inputs) and not op.scalar_nonfinite
        if finite_in and not all(values[f][0] for f in op.outputs):
            return index, "nan" if any(not values[f][1] for f in op.outputs) else "inf"
    for index, op in enumerate(ops):
        if all(values[f][1] for f in op.inputs) and any(not values[f][1] for f in op.outputs):
            return index, "nan"
    return None


def restore_rng(rng: tuple[Any, dict[Any, Any]]) -> None:
    """Put back the CPU and CUDA generator states of ``measure.stats.rng_state``: a re-run of a step
    draws the dropout masks the step drew (another mask may not make the NaN at all)."""
    import torch

    torch.random.set_rng_state(rng[0])
    for device, state in rng[1].items():
        torch.cuda.set_rng_state(state, device)


def locate_nonfinite_op(
    ctx: Any,
    batch_index: int,
    autocast: Any = None,
    precision: str | None = None,
    component: str | None = None,
    rng: tuple[Any, dict[Any, Any]] | None = None,
) -> OpPass:
    """Run the loss on one cached batch under the op watch; name the op that made NaN/Inf.

    The walk starts at the loss (or ``component``); without a non-finite one, at the first op
    that made non-finite values from finite inputs. ``rng``: the generator states the failing
    pass started from (a step after training); without it, the run's seed (a step-0 pass).
    """
    import torch

    model, batch = ctx.model, ctx.batches[batch_index]
    result = OpPass(batch=batch_index, autocast=precision)
    watch = _Watch(model)
    model.train()
    if rng is None:
        torch.manual_seed(ctx.settings.seed)
    else:
        restore_rng(rng)
    loss = None
    with ExitStack() as stack:
        stack.enter_context(watch.hooks(model))
        if autocast is not None:
            stack.enter_context(autocast)
        stack.enter_context(_dispatch_mode_class()(watch))
        try:
            loss = ctx.loss(batch)
        except UsageError:
            raise
        except InternalError as exc:  # a finer place is a bonus: the module-level finding stands without it
            result.notes.append(f"the op pass failed inside nandoctor: {exc}")
            return result
        except Exception as exc:  # the user's code raised: the op that raised is the answer
            result.error = describe(exc)
    result.ops_seen, result.crash = len(watch.ops), watch.crash
    if loss is not None and watch.flags:
        values = torch.stack([f.to(watch.flags[0].device) for f in watch.flags]).tolist()  # the one sync
        targets = [loss.components[component]] if component is not None else [loss.total, *loss.components.values()]
        starts = [watch.producer.get(id(t)) for t in targets if id(t) in watch.flag_of]
        start = next(
            (s for s, t in zip(starts, targets) if s is not None and not values[watch.flag_of[id(t)]][0]), None
        )
        found = _origin(watch.ops, values, start) if start is not None else _first_made(watch.ops, values)
        if found is not None:
            op = watch.ops[found[0]]
            result.site = OpSite(op.name, op.module, op.source, op.dtype, found[1])
        else:
            result.notes.append("every op's output was finite in this pass")
    return result


# --- autograd nodes: the user's line that created each --------------------------------------


def _function_mode_class() -> type:
    import torch
    from torch.overrides import TorchFunctionMode

    class NodeSources(TorchFunctionMode):
        """After each torch function, tag the autograd nodes it created with the user's line."""

        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            items = out if isinstance(out, (tuple, list)) else (out,)
            roots = [t.grad_fn for t in items if isinstance(t, torch.Tensor) and t.grad_fn is not None]
            if roots and SOURCE_KEY not in roots[0].metadata:
                ours(tag_graph)(roots, SOURCE_KEY, user_source())
            return out

    return NodeSources


@contextmanager
def node_sources() -> Iterator[None]:
    """While active, each autograd node created is tagged (``SOURCE_KEY``) with the user's line."""
    with _function_mode_class()():
        yield
