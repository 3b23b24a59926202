"""What changed over the guard's last steps: the learning rate, the loss, which gradient or activation grew.

Reads the ring buffer of a capture (plain host records) and returns plain data, most telling
first: a jump of the learning rate, then growth ratios of the global gradient norm, of each
module's gradient and largest activation (sampled steps), and of the update size.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

LR_JUMP = 10.0  # a learning rate that grows this many times from one step to the next is a jump, not a schedule
TOP = 3  # modules named per kind of growth
GREW = 2.0  # a module's gradient or activation that at least doubled is named (smaller drifts are noise)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def lr_jump(ring: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The largest step-to-step rise of any param group's learning rate, when it is a jump."""
    best = None
    for before, after in zip(ring, ring[1:]):
        for group, (old, new) in enumerate(zip(before.get("lrs") or [], after.get("lrs") or [])):
            if old > 0 and new / old >= LR_JUMP and (best is None or new / old > best["ratio"]):
                best = {
                    "what": "lr",
                    "name": f"param group {group}",
                    "from": old,
                    "to": new,
                    "from_step": before["step"],
                    "to_step": after["step"],
                    "ratio": new / old,
                }
    if best:
        best["text"] = (
            f"the learning rate of {best['name']} jumped from {best['from']:.3g} to {best['to']:.3g} "
            f"at step {best['to_step']} (x{best['ratio']:.3g})"
        )
    return best


def _by_module(values: dict[str, float]) -> dict[str, float]:
    """Parameter gradient norms summed (in quadrature) per owning module."""
    modules: dict[str, float] = {}
    for name, value in values.items():
        module = name.rpartition(".")[0]
        modules[module] = modules.get(module, 0.0) + value * value
    return {module: math.sqrt(total) for module, total in modules.items()}


def _growth(
    ring: list[dict[str, Any]], key: str, what: str, label: str, per_module: bool = False
) -> list[dict[str, Any]]:
    """Each name's value at the last sampled step over its value at the first one, largest growth first."""
    samples = [r for r in ring if r.get(key)]
    if len(samples) < 2:
        return []
    first, last = samples[0], samples[-1]
    old = _by_module(first[key]) if per_module else first[key]
    new = _by_module(last[key]) if per_module else last[key]
    grown = []
    for name, before in old.items():
        after = new.get(name)
        if not (_finite(before) and before > 0) or after is None:
            continue
        ratio = after / before if _finite(after) else math.inf
        if ratio >= GREW:
            grown.append(
                {
                    "what": what,
                    "name": name or "<root>",
                    "from": before,
                    "to": after,
                    "ratio": ratio,
                    "from_step": first["step"],
                    "to_step": last["step"],
                    "text": f"{label} of {name or '<root>'!r} grew x{ratio:.3g} ({before:.3g} -> {after:.3g}) "
                    f"from step {first['step']} to {last['step']}",
                }
            )
    return sorted(grown, key=lambda g: -g["ratio"])[:TOP]


def _series(ring: list[dict[str, Any]], key: str, what: str, label: str) -> list[dict[str, Any]]:
    """The last value of a per-step series against the window's median."""
    points = [(r["step"], r.get(key)) for r in ring if r.get(key) is not None]
    finite = [v for _, v in points if _finite(v)]
    if len(points) < 2 or not finite:
        return []
    median = statistics.median(finite)
    step, last = points[-1]
    ratio = (last / median if median else math.inf) if _finite(last) else math.inf
    return [
        {
            "what": what,
            "name": key,
            "from": median,
            "to": last,
            "ratio": ratio,
            "from_step": points[0][0],
            "to_step": step,
            "text": f"{label} was {last:.4g} at step {step}, against a median of "
            f"{median:.4g} over steps {points[0][0]}..{step}",
        }
    ]


def changes(ring: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Everything that changed over the ring, the learning-rate jump first, then by growth."""
    jump = lr_jump(ring)
    grown = (
        _series(ring, "loss", "loss", "the loss")
        + _series(ring, "grad_norm", "grad_norm", "the gradient norm")
        + _growth(ring, "param_grad_norms", "module_grad", "the gradient", per_module=True)
        + _growth(ring, "activation_max", "activation", "the largest activation")
        + _series(ring, "update_norm", "update", "the update size")
    )
    return ([jump] if jump else []) + sorted(grown, key=lambda g: -g["ratio"])
