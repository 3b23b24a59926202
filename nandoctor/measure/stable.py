"""The stable-form control: the same training with one fragile op computed in its numerically stable form.

A NaN that appears after some steps has an op (log, exp, sqrt) and a trigger (the rate that drove
its input to the point where it breaks). Which one is the cause is decided by re-running, not by
the op's name: while :func:`stable_forms` is active, the op at the user's line that failed is
computed in its stable form, the user's code untouched. Recognised (a ``TorchFunctionMode`` remembers
what produced each tensor, so ``log`` can be computed from the producer's input):

- ``log(softmax(x))`` -> ``log_softmax(x)``; ``log(sigmoid(x))`` -> ``logsigmoid(x)``;
  ``log(1 - sigmoid(x))`` -> ``logsigmoid(-x)``;
- ``binary_cross_entropy(sigmoid(x), y)`` -> ``binary_cross_entropy_with_logits(x, y)``;
- ``sqrt(x)`` -> ``sqrt(x + eps)``;
- ``exp(s)`` -> ``exp(s.clamp(-bound, bound))`` (the exp of a predicted log-variance or log-scale).

A sigmoid's output is followed through reshapes, indexing and casts.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from nandoctor.measure.hooks import ours
from nandoctor.measure.ops import user_source

SQRT_EPS = 1e-12
EXP_BOUND = 20.0  # exp(20) ~ 5e8: a variance or scale far past any a model needs, far from float32's limits

# what each rewrite reads as, for the finding's evidence and advice
FORMS = {
    "log_softmax": "log(softmax(x)) -> log_softmax(x) (or F.cross_entropy on the logits)",
    "logsigmoid": "log(sigmoid(x)) -> F.logsigmoid(x), log(1 - sigmoid(x)) -> F.logsigmoid(-x) "
    "(or F.binary_cross_entropy_with_logits on the logits)",
    "bce_with_logits": "binary_cross_entropy(sigmoid(x), y) -> binary_cross_entropy_with_logits(x, y)",
    "sqrt_eps": f"sqrt(x) -> sqrt(x + {SQRT_EPS:g})",
    "exp_clamp": f"exp(s) -> exp(s.clamp({-EXP_BOUND:g}, {EXP_BOUND:g})): clamp the predicted log-variance",
}


@dataclass
class Rewrites:
    """What the control rewrote: form -> how many calls, and the lines they were made at."""

    counts: dict[str, int] = field(default_factory=dict)
    sources: set[str] = field(default_factory=set)

    def add(self, form: str, source: str | None) -> None:
        self.counts[form] = self.counts.get(form, 0) + 1
        if source:
            self.sources.add(source)

    @property
    def forms(self) -> list[str]:
        return sorted(self.counts)


# ops that only reshape, select or cast: sigmoid(x) passed through one is sigmoid of x passed through it
# (softmax is not followed: its dim would move)
_ELEMENTWISE_VIEWS = {
    "squeeze",
    "unsqueeze",
    "view",
    "reshape",
    "flatten",
    "__getitem__",
    "select",
    "contiguous",
    "float",
    "double",
    "to",
    "transpose",
    "permute",
    "t",
    "view_as",
    "reshape_as",
    "narrow",
}


def _name(func: Any) -> str:
    return getattr(func, "__name__", "")


def _arg(args: tuple, kwargs: dict, index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)


def _mode_class() -> type:
    import torch
    from torch.nn import functional as F
    from torch.overrides import TorchFunctionMode

    class StableForms(TorchFunctionMode):
        """Remembers softmax/sigmoid outputs (by identity, weakly) and rewrites the fragile op at ``at``."""

        def __init__(self, at: str | None, rewrites: Rewrites):
            super().__init__()
            self.at, self.rewrites = at, rewrites
            self.made: dict[int, tuple[Any, str, Any, Any]] = {}  # id(output) -> (weakref, kind, input, dim)

        def _producer(self, tensor: Any) -> tuple[str, Any, Any] | None:
            entry = self.made.get(id(tensor)) if isinstance(tensor, torch.Tensor) else None
            if entry is None or entry[0]() is not tensor:
                return None
            return entry[1], entry[2], entry[3]

        def _remember(self, output: Any, kind: str, source: Any, dim: Any = None) -> None:
            if isinstance(output, torch.Tensor):
                self.made = {k: v for k, v in self.made.items() if v[0]() is not None}
                self.made[id(output)] = (weakref.ref(output), kind, source, dim)

        def _here(self) -> tuple[bool, str | None]:
            source = user_source()  # an op with no user frame above it (the optimizer's sqrt) is never rewritten
            return source is not None and (self.at is None or source == self.at), source

        def _stable(self, name: str, args: tuple, kwargs: dict) -> Any:
            """The stable form of this call, or None to run it as written."""
            first = _arg(args, kwargs, 0, "input")
            if name == "log":
                producer = self._producer(first)
                if producer is None or not self._here()[0]:
                    return None
                kind, x, dim = producer
                if kind == "softmax":
                    return "log_softmax", F.log_softmax(x, dim=dim)
                return "logsigmoid", F.logsigmoid(x if kind == "sigmoid" else -x)
            if name == "binary_cross_entropy":
                producer = self._producer(first)
                if producer is None or producer[0] == "softmax" or not self._here()[0]:
                    return None
                x = producer[1] if producer[0] == "sigmoid" else -producer[1]
                target, weight = _arg(args, kwargs, 1, "target"), _arg(args, kwargs, 2, "weight")
                reduction = kwargs.get("reduction", args[5] if len(args) > 5 else "mean")
                return "bce_with_logits", F.binary_cross_entropy_with_logits(x, target, weight, reduction=reduction)
            if (
                name in ("sqrt", "exp")
                and isinstance(first, torch.Tensor)
                and first.is_floating_point()
                and self._here()[0]
            ):
                if name == "sqrt":
                    return "sqrt_eps", torch.sqrt(first + SQRT_EPS)
                return "exp_clamp", torch.exp(first.clamp(-EXP_BOUND, EXP_BOUND))
            return None

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = _name(func)
            stable = (
                ours(self._stable)(name, args, kwargs)
                if name in ("log", "binary_cross_entropy", "sqrt", "exp")
                else None
            )
            if stable is not None:
                self.rewrites.add(stable[0], ours(user_source)())
                return stable[1]
            out = func(*args, **kwargs)
            if name == "softmax" and _arg(args, kwargs, 1, "dim") is not None:
                self._remember(out, "softmax", _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "dim"))
            elif name == "sigmoid":
                self._remember(out, "sigmoid", _arg(args, kwargs, 0, "input"))
            elif name in _ELEMENTWISE_VIEWS and args:
                producer = self._producer(args[0])
                if producer is not None and producer[0] != "softmax":
                    self._remember(out, producer[0], func(producer[1], *args[1:], **kwargs))
            elif (
                name in ("__rsub__", "rsub")
                and len(args) > 1
                and not isinstance(args[1], torch.Tensor)
                and args[1] == 1
            ):
                producer = self._producer(args[0])
                if producer is not None and producer[0] in ("sigmoid", "one_minus_sigmoid"):
                    # 1 - sigmoid(x) = sigmoid(-x): its log is logsigmoid(-x)
                    self._remember(out, "one_minus_sigmoid" if producer[0] == "sigmoid" else "sigmoid", producer[1])
            return out

    return StableForms


@contextmanager
def stable_forms(at: str | None) -> Iterator[Rewrites]:
    """While active, the fragile op at the user's line ``at`` (any line: None) runs in its stable form."""
    rewrites = Rewrites()
    with _mode_class()(at, rewrites):
        yield rewrites
