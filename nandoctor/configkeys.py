"""Which config key a fix names: the spec's ``config_keys``, else a key by its usual name.

Without a config, fixes use the spec's own keys (``lr``, ``grad_clip``, ``amp``,
``loss_weights.<component>``), as CONTRACT.md §2 says.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

USUAL_NAMES = {
    "lr": ("lr", "learning_rate", "learningrate", "base_lr", "max_lr"),
    "grad_clip": ("grad_clip", "gradient_clip_val", "max_norm", "clip_grad_norm", "grad_clip_norm",
                  "gradient_clip", "clip_norm", "max_grad_norm"),
    "amp": ("amp", "use_amp", "precision", "mixed_precision"),
    "dropout": ("dropout", "dropout_rate", "dropout_p"),
}


def _flatten(config: Mapping, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _candidates(what: str) -> tuple[str, ...]:
    if what.startswith("loss_weights."):
        component = what.split(".", 1)[1]
        return (f"lambda_{component}", f"{component}_weight", f"weight_{component}", f"w_{component}",
                f"{component}_lambda", f"lambda{component}")
    return USUAL_NAMES.get(what, (what,))


def config_key(setup: Any, what: str) -> str | None:
    """The dotted config key for ``what`` (``lr``, ``grad_clip``, ``loss_weights.dist``), or None."""
    if what in (setup.config_keys or {}):
        return setup.config_keys[what]
    if not setup.config:
        return None
    flat = _flatten(setup.config)
    names = _candidates(what)
    for name in names:  # the shallowest key with a usual name wins
        matches = sorted((k for k in flat if k.rsplit(".", 1)[-1].lower() == name), key=lambda k: k.count("."))
        if matches:
            return matches[0]
    return None


def fix_config(setup: Any, what: str, value: Any) -> tuple[dict[str, Any], str]:
    """``({key: value}, note)``: the config's key when found, else the spec's key and what to add."""
    key = config_key(setup, what)
    if key is not None:
        return {key: value}, ""
    if setup.config:
        return {what: value}, f" (no key for {what} found in your config: add one, or map it in config_keys)"
    return {what: value}, ""
