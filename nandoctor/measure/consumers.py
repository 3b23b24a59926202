"""Where a batch tensor is first consumed by a layer with parameters, and what that layer sees.

The scale of a raw feature only matters where a weight first multiplies it: a model that
standardizes with buffers in its own forward, or puts a BatchNorm/LayerNorm first, is fine,
and features concatenated or reshaped before the first layer are still that layer's input.
Tensor identity cannot tell (a ``torch.cat`` makes a new tensor), so the chosen batch tensors
are replaced by copies that require grad, and a parametrized module's input is traced back
through the autograd graph to the copies it depends on. One forward of one batch, run only
for tensors whose raw scale was flagged.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from nandoctor.batches import iter_tensors, map_tensors
from nandoctor.errors import InternalError, UsageError
from nandoctor.measure.hooks import module_names, ours


@dataclass
class Consumer:
    """The first parametrized module whose input depends on a batch tensor, and that input."""

    module: str
    kind: str
    seen: Any  # the module's first float input (detached) that depends on the tensor


def _parametrized_leaf(module: Any) -> bool:
    """A layer whose own weights take its input (a container passes its input on to children)."""
    return next(module.children(), None) is None and any(True for _ in module.parameters(recurse=False))


class _Dependencies:
    """Which of the leaf copies an autograd node depends on, memoized over the whole pass."""

    def __init__(self, leaves: dict[int, str]):
        self.leaves = leaves  # id(leaf copy) -> batch path
        self.memo: dict[Any, frozenset[str]] = {}

    def of(self, tensor: Any) -> frozenset[str]:
        if id(tensor) in self.leaves:
            return frozenset([self.leaves[id(tensor)]])
        return self._node(tensor.grad_fn) if tensor.grad_fn is not None else frozenset()

    def _node(self, root: Any) -> frozenset[str]:
        stack = [(root, False)]
        while stack:  # iterative post-order: deep graphs would overflow recursion
            node, expanded = stack.pop()
            if node is None or (node in self.memo and not expanded):
                continue
            children = [n for n, _ in getattr(node, "next_functions", ())]
            if not expanded:
                stack.append((node, True))
                stack.extend((child, False) for child in children if child is not None and child not in self.memo)
                continue
            found = set()
            variable = getattr(node, "variable", None)
            if variable is not None and id(variable) in self.leaves:
                found.add(self.leaves[id(variable)])
            for child in children:
                if child is not None:
                    found |= self.memo.get(child, frozenset())
            self.memo[node] = frozenset(found)
        return self.memo.get(root, frozenset())


def first_consumers(ctx: Any, batch_index: int, paths: list[str]) -> dict[str, Consumer | None] | None:
    """For each float batch tensor at ``paths``: its first parametrized consumer (None: none).

    Returns None when the forward raises (the forward probe reports that).
    """
    import torch

    batch = ctx.batches[batch_index]
    by_id = {id(t): p for p, t in iter_tensors(batch) if p in paths and t.is_floating_point()}
    copies: dict[int, str] = {}

    def copy(tensor: Any) -> Any:
        if id(tensor) not in by_id:
            return tensor
        leaf = tensor.detach().clone().requires_grad_(True)
        copies[id(leaf)] = by_id[id(tensor)]
        return leaf

    traced_batch = map_tensors(batch, copy)
    dependencies = _Dependencies(copies)
    found: dict[str, Consumer | None] = {p: None for p in copies.values()}
    names = module_names(ctx.model)

    def pre_hook(module: Any, args: tuple, kwargs: dict) -> None:
        for _, tensor in iter_tensors((args, kwargs)):
            if not tensor.is_floating_point() or not tensor.requires_grad:
                continue
            for path in dependencies.of(tensor):
                if found[path] is None:
                    found[path] = Consumer(
                        names.get(id(module), type(module).__name__), type(module).__name__, tensor.detach()
                    )

    ctx.model.train()
    with ExitStack() as handles, torch.enable_grad():
        for module in ctx.model.modules():
            if _parametrized_leaf(module):
                handles.enter_context(module.register_forward_pre_hook(ours(pre_hook), with_kwargs=True))
        try:
            ctx.loss(traced_batch)
        except (UsageError, InternalError):
            raise
        except Exception:
            return None
    return found
