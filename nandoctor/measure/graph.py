"""Which trainable parameters the loss cannot reach, and where their path is cut.

The traced pass says which parameters got no gradient (``grad is None``) or an exactly zero one
on every cached batch. This module explains them with one more forward of a cached batch:

- a ``TorchFunctionMode`` sees every op: which parameters an op used (a parameter no op used is
  merely unused), which ops ran on a parameter while grad mode was off (``torch.no_grad``,
  ``inference_mode``), and every call that leaves the graph (``detach``, ``.data``, ``.item()``,
  ``.tolist()``, ``.numpy()``), with the user's line and the parameters its input depended on;
- module pre-hooks note the outermost module entered with grad mode off, and the user's line that
  called it;
- for exactly-zero gradients, a control: one small step of every parameter that does get a
  gradient, then the gradient again. Zero-valued parameters whose gradient stays exactly zero
  sit at a fixed point (a product of zero-initialised factors): no optimizer ever moves them.
  A parameter that moves once its neighbours do (a zero-initialised output layer) is not stuck.

The runner restores the model after the probe; nothing here outlives the pass.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from nandoctor.measure.activity import RELU_FAMILY
from nandoctor.measure.hooks import ACCUMULATE, module_names, ours
from nandoctor.measure.ops import is_user_file, user_source

_LEAVING = {"detach", "detach_", "item", "tolist", "numpy", "__get__"}  # __get__: Tensor.data


@dataclass
class Cut:
    """One place the graph is cut, and the parameters behind it."""

    how: str  # "no_grad", "detach", "item", ..., or "unknown"
    op: str | None
    source: str | None
    module: str | None  # the module entered under no_grad, when that is the cut
    parameters: list[str] = field(default_factory=list)


@dataclass
class GradientPaths:
    """What the loss of one batch reaches, in plain data."""

    trainable: list[str]
    cut: list[str]  # used by some op, yet no gradient on any batch
    unused: list[str]  # no op used them: a module the forward never calls
    stuck: list[str]  # zero-valued, exactly zero gradient, still zero after a step of the others
    blocked: list[str]  # exactly zero gradient behind the stuck ones
    cuts: list[Cut]
    loss_leaf: bool  # the loss has no grad_fn, or none that reaches a trainable parameter
    loss_requires_grad: bool


def _tensors(value: Any, torch: Any) -> list[Any]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item, torch)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item, torch)]
    return []


def _reached(root: Any, wanted: set[int]) -> set[int]:
    """Ids of the ``wanted`` parameters an autograd graph from ``root`` accumulates into."""
    found: set[int] = set()
    seen: set[int] = set()
    todo = [root]
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.name() == ACCUMULATE:
            if id(node.variable) in wanted:
                found.add(id(node.variable))
            continue
        todo.extend(next_node for next_node, _ in node.next_functions)
    return found


def _called_by_user() -> bool:
    """Whether the frame that made the current torch call is the user's (not torch's own ``.data``)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_name != "__torch_function__":
        frame = frame.f_back
    caller = frame.f_back if frame is not None else None
    return caller is not None and is_user_file(caller.f_code.co_filename)


def _watch_class() -> type:
    import torch
    from torch.overrides import TorchFunctionMode

    class WatchPaths(TorchFunctionMode):
        def __init__(self, params: dict[int, str], missing: set[int]):
            super().__init__()
            self.params, self.missing = params, missing
            self.used: set[int] = set()
            # (op, source, params behind it, called from the user's own code)
            self.cuts: list[tuple[str, str | None, set[int], bool]] = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            ours(self._look)(func, args, kwargs)
            return func(*args, **kwargs)

        def _look(self, func: Any, args: tuple, kwargs: dict) -> None:
            tensors = _tensors((args, kwargs), torch)
            mine = {id(t) for t in tensors if id(t) in self.params}
            self.used |= mine
            name = getattr(func, "__name__", "")
            if not torch.is_grad_enabled() and mine & self.missing:
                self.cuts.append((f"{name} under no_grad", user_source(), mine & self.missing, _called_by_user()))
            if name in _LEAVING and tensors and tensors[0].requires_grad:
                first = tensors[0]
                behind = {id(first)} & self.missing if first.grad_fn is None else _reached(first.grad_fn, self.missing)
                if behind:
                    op = "data" if name == "__get__" else name
                    self.cuts.append((op, user_source(), behind, _called_by_user()))

    return WatchPaths


def measure_paths(ctx: Any, batch_index: int, none: list[str], zero: list[str]) -> GradientPaths:
    """Explain the parameters with no gradient (``none``) and exactly zero ones (``zero``)."""
    import torch

    model = ctx.model
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    ids = {id(p): n for n, p in named.items()}
    missing = {id(named[n]) for n in none if n in named}
    names = module_names(model)
    entered: list[tuple[str, str | None]] = []  # outermost modules entered with grad mode off

    def pre_hook(module: Any, args: Any) -> None:
        if not torch.is_grad_enabled() and not any(name_is_inside(names.get(id(module), ""), e) for e, _ in entered):
            entered.append((names.get(id(module), type(module).__name__), user_source()))

    for param in model.parameters():
        param.grad = None
    watch = _watch_class()(ids, missing)
    with ExitStack() as stack:
        for module in model.modules():
            stack.enter_context(module.register_forward_pre_hook(ours(pre_hook)))
        stack.enter_context(watch)
        loss = ctx.loss(ctx.batches[batch_index]).total
    if zero and loss.grad_fn is not None:  # the gradients the control step follows
        loss.backward()
    reaches_nothing = loss.grad_fn is None or not _reached(loss.grad_fn, set(ids))
    cut = [n for n in none if id(named.get(n)) in watch.used or n in named and reaches_nothing]
    unused = [n for n in none if n not in cut]
    calls = sorted(watch.cuts, key=lambda c: not c[3])  # the user's own calls first
    cuts = _group(cut, named, calls, entered, reaches_nothing)
    stuck, blocked = _fixed_point(ctx, batch_index, named, zero) if zero else ([], [])
    return GradientPaths(
        trainable=list(named),
        cut=cut,
        unused=unused,
        stuck=stuck,
        blocked=blocked,
        cuts=cuts,
        loss_leaf=reaches_nothing,
        loss_requires_grad=bool(loss.requires_grad),
    )


def name_is_inside(name: str, outer: str) -> bool:
    return outer == "" or name == outer or name.startswith(outer + ".")


def _group(cut: list[str], named: dict, calls: list, entered: list, reaches_nothing: bool) -> list[Cut]:
    """Each cut parameter under the first place that explains it: a module entered under no_grad,
    an op that ran on it under no_grad, a call that left the graph; else the loss itself."""
    groups: dict[tuple, Cut] = {}
    for name in cut:
        place: tuple[str, str | None, str | None, str | None]
        module = next((m for m, _ in entered if name_is_inside(name, m)), None)
        if module is not None:
            place = ("no_grad", "torch.no_grad", dict(entered)[module], module)
        else:
            call = next((c for c in calls if id(named[name]) in c[2]), None)
            if call is not None:
                how = "no_grad" if call[0].endswith("under no_grad") else call[0]
                place = (how, call[0], call[1], None)
            elif reaches_nothing:
                place = ("loss_leaf", None, None, None)
            else:
                place = ("unknown", None, None, None)
        group = groups.setdefault(place, Cut(place[0], place[1], place[2], place[3]))
        group.parameters.append(name)
    return list(groups.values())


def _fixed_point(ctx: Any, batch_index: int, named: dict, zero: list[str]) -> tuple[list[str], list[str]]:
    """Zero-valued parameters whose gradient stays exactly zero after the others take a small step.

    Not when a ReLU receives all-zero inputs and a gradient at its output: a zeroed layer before a
    ReLU sits at the ReLU's kink, the dead_units probe's case, not a product of zero factors.
    """
    import torch

    candidates = [n for n in zero if n in named and not bool(named[n].detach().any())]
    if not candidates:
        return [], list(zero)
    with torch.no_grad():
        for name, param in named.items():
            grad = param.grad
            if name in zero or grad is None or grad.is_sparse:
                continue
            scale = max(float(param.detach().abs().mean()), 1e-3) * 1e-2
            param.add_(torch.sign(grad), alpha=-scale)
    for param in named.values():
        param.grad = None
    kinks: list[tuple[Any, list[Any]]] = []  # (input all zero, [gradient at the output non-zero])

    def at_relu(module: Any, args: tuple, output: Any) -> None:
        if not args or not isinstance(args[0], torch.Tensor) or not isinstance(output, torch.Tensor):
            return
        flags: list[Any] = []
        kinks.append((~args[0].detach().any(), flags))
        if output.requires_grad:
            output.register_hook(lambda grad: flags.append(grad.detach().any()))

    with ExitStack() as stack:
        for module in ctx.model.modules():
            if type(module).__name__ in RELU_FAMILY:
                stack.enter_context(module.register_forward_hook(ours(at_relu)))
        total = ctx.loss(ctx.batches[batch_index]).total
        if total.requires_grad:
            total.backward()
    if any(bool(zero_input) and any(bool(f) for f in flags) for zero_input, flags in kinks):
        return [], list(zero)
    still = [n for n in candidates if named[n].grad is None or not bool(named[n].grad.detach().any())]
    return still, [n for n in zero if n not in still]
