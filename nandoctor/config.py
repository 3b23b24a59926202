"""The user's training config: which key a fix names, and the fixed config written back.

Fixes name dotted keys (``optim.learning_rate``): the spec's ``config_keys`` first, else a key
by its usual name; without a config, the spec's own keys (``lr``, ``grad_clip``, ``amp``,
``loss_weights.<component>``), as the contract says. The fixed config is a round trip
(ruamel.yaml) that changes those values and nothing else; the input is never overwritten
unless asked.
"""

from __future__ import annotations

import difflib
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nandoctor.errors import UsageError, first_line


@dataclass(frozen=True)
class FixKey:
    """What a fix tunes (``lr``: the spec's key, as the contract names it) and the names a training
    config usually gives it (``learning_rate``, ``base_lr``), searched when ``config_keys`` is silent."""

    name: str
    aliases: tuple[str, ...]


LR = FixKey("lr", ("lr", "learning_rate", "learningrate", "base_lr", "max_lr"))
GRAD_CLIP = FixKey(
    "grad_clip",
    (
        "grad_clip",
        "gradient_clip_val",
        "max_norm",
        "clip_grad_norm",
        "grad_clip_norm",
        "gradient_clip",
        "clip_norm",
        "max_grad_norm",
    ),
)
AMP = FixKey("amp", ("amp", "use_amp", "precision", "mixed_precision"))


def loss_weight(component: str) -> FixKey:
    """The weight of one named loss component (``loss_weights.<component>``)."""
    return FixKey(
        f"loss_weights.{component}",
        (
            f"lambda_{component}",
            f"{component}_weight",
            f"weight_{component}",
            f"w_{component}",
            f"{component}_lambda",
            f"lambda{component}",
        ),
    )


def _flatten(config: Mapping, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def config_key(setup: Any, what: FixKey) -> str | None:
    """The dotted config key for ``what`` (``lr``, ``grad_clip``, ``loss_weights.dist``), or None."""
    if what.name in (setup.config_keys or {}):
        return setup.config_keys[what.name]
    if not setup.config:
        return None
    flat = _flatten(setup.config)
    for name in what.aliases:  # the shallowest key with a usual name wins
        matches = sorted((k for k in flat if k.rsplit(".", 1)[-1].lower() == name), key=lambda k: k.count("."))
        if matches:
            return matches[0]
    return None


def fix_config(setup: Any, what: FixKey, value: Any) -> tuple[dict[str, Any], str]:
    """``({key: value}, note)``: the config's key when found, else the spec's key and what to add."""
    key = config_key(setup, what)
    if key is not None:
        return {key: value}, ""
    if setup.config:
        return {what.name: value}, (
            f" (no key for {what.name} found in your config: add one, or map it in config_keys)"
        )
    return {what.name: value}, ""


def _yaml():
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096

    def float_repr(representer, value: float):
        # "1.0e-05", not "1e-05": YAML 1.1 readers (PyYAML) take the latter for a string
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent}"
        if "e" in text and text.split("e")[1][0] not in "+-":
            mantissa, exponent = text.split("e")
            text = f"{mantissa}e+{exponent}"
        return representer.represent_scalar("tag:yaml.org,2002:float", text)

    yaml.representer.add_representer(float, float_repr)
    yaml.representer.add_representer(  # ruamel writes None as nothing: keep the user's "null"
        type(None), lambda representer, _: representer.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    return yaml


def load_config(path: str) -> tuple[Any, str]:
    """The round-trip document and the file's text."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"no such config file: {path}")
    text = file.read_text()
    try:
        doc = _yaml().load(text)
    except Exception as exc:
        raise UsageError(f"config file {path} is not valid YAML: {first_line(exc) or type(exc).__name__}") from exc
    if doc is None:
        doc = {}
    if not hasattr(doc, "items"):
        raise UsageError(f"config file {path} must hold a mapping at the top")
    return doc, text


def plain(doc: Any) -> Any:
    """The round-trip document as plain dicts, lists and scalars."""
    if hasattr(doc, "items"):
        return {str(k): plain(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [plain(v) for v in doc]
    return doc


def _convert(old: Any, new: Any) -> Any:
    """Keep the config's own vocabulary: Lightning's "16-mixed" precision becomes "bf16-mixed"."""
    if isinstance(old, str) and new == "bf16" and old.endswith("-mixed"):
        return "bf16-mixed"
    if isinstance(old, bool) and new in ("bf16", "fp16"):
        return old
    if isinstance(old, int) and not isinstance(old, bool) and isinstance(new, float) and new.is_integer():
        return int(new)
    return new


def apply_fixes(doc: Any, findings: Iterable[Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """Set each fix's dotted keys in ``doc`` (first finding wins); returns changes and unknown keys."""
    changes, missing, done = [], [], set()
    for finding in findings:
        for dotted, value in finding.fix.config.items():
            if dotted in done:
                continue
            done.add(dotted)
            parts = dotted.split(".")
            node = doc
            for part in parts[:-1]:
                node = node.get(part) if hasattr(node, "get") else None
                if node is None:
                    break
            if node is None or not hasattr(node, "items") or parts[-1] not in node:
                missing.append(dotted)
                continue
            old = node[parts[-1]]
            node[parts[-1]] = _convert(old, value)
            changes.append({"key": dotted, "old": plain(old), "new": plain(node[parts[-1]]), "code": finding.code})
    return changes, missing


def dump(doc: Any) -> str:
    stream = io.StringIO()
    _yaml().dump(doc, stream)
    return stream.getvalue()


def write_fixed(doc: Any, original: str, source: str | None, target: str, in_place: bool) -> str:
    """Write the patched config to ``target``; returns the unified diff."""
    target_path = Path(target)
    if source is not None and target_path.resolve() == Path(source).resolve() and not in_place:
        raise UsageError(f"--write-fixed would overwrite the input config {source}: pass --in-place to allow it")
    fixed = dump(doc)
    target_path.write_text(fixed)
    return "".join(
        difflib.unified_diff(
            original.splitlines(keepends=True),
            fixed.splitlines(keepends=True),
            fromfile=source or "config",
            tofile=target,
        )
    )
