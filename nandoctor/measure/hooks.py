"""The one hooked forward: module names, and forward hooks run over every cached batch.

Probes that only read module outputs (saturation, dead units, the AMP comparison) use this
instead of installing hooks and looping over the batches themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Any

from nandoctor.errors import InternalError, describe


def ours(hook: Callable) -> Callable:
    """Mark a hook as nandoctor's: anything it raises is our bug (InternalError), never the user's.

    Exceptions meant for the user (an ``EmbeddingIndexError`` found before the embedding runs)
    subclass ``UserFacing`` and pass through unchanged.
    """
    from functools import wraps

    @wraps(hook)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return hook(*args, **kwargs)
        except (UserFacing, InternalError):
            raise
        except Exception as exc:
            raise InternalError(f"in {getattr(hook, '__qualname__', 'a hook')}: {describe(exc)}") from exc

    return guarded


class UserFacing(Exception):
    """Raised on purpose by a hook to stop the user's forward with a finding about the user's setup."""


def module_names(model: Any) -> dict[int, str]:
    """``id(module) -> qualified name``; a module reachable under two names keeps the first."""
    names: dict[int, str] = {}
    for name, module in model.named_modules():
        names.setdefault(id(module), name)
    return names


@contextmanager
def forward_hooks(model: Any, hook: Callable, select: Callable[[Any], bool] | None = None) -> Iterator[None]:
    """``hook(name, module, output)`` after each selected module's forward; removed on exit."""
    names = module_names(model)

    @ours
    def call(module: Any, args: Any, output: Any) -> None:
        hook(names.get(id(module), type(module).__name__), module, output)

    with ExitStack() as handles:
        for module in model.modules():
            if select is None or select(module):
                handles.enter_context(module.register_forward_hook(call))
        yield


def hooked_forward(ctx: Any, hook: Callable, select: Callable[[Any], bool] | None = None,
                   batches: list[int] | None = None, autocast: Any = None) -> None:
    """Run the loss without gradients over the cached batches with ``hook`` on every selected module."""
    import torch

    indices = range(len(ctx.batches)) if batches is None else batches
    with forward_hooks(ctx.model, hook, select), torch.no_grad(), (autocast or nullcontext()):
        for index in indices:
            ctx.loss(ctx.batches[index])


ACCUMULATE = "torch::autograd::AccumulateGrad"


def tag_graph(roots: list[Any], key: str, value: Any) -> None:
    """Set ``node.metadata[key] = value`` on every autograd node reachable from ``roots`` without one.

    A tagged node's ancestors are tagged already (the walk stops there), so tagging at every module
    boundary gives each node the innermost context that was current when it was created.
    """
    todo = list(roots)
    while todo:
        node = todo.pop()
        if node is None or node.name() == ACCUMULATE or key in node.metadata:
            continue
        node.metadata[key] = value
        todo.extend(next_node for next_node, _ in node.next_functions)
