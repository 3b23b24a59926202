"""What every hook nandoctor installs shares: the ``ours`` guard, module names, graph tags.

``ours`` keeps a bug in our hooks from being reported as the user's (``UserFacing`` is the
exception a hook raises on purpose to stop the user's forward with a finding); ``module_names``
names modules as ``named_modules`` does; ``tag_graph`` marks autograd nodes with the context
(module, op) that was current when they were created. Each measurement installs its own hooks.
"""

from __future__ import annotations

from collections.abc import Callable
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
