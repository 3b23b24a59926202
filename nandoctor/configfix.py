"""Hand over the fixed config: patch the user's YAML, keeping comments and key order.

Fixes name dotted keys (``optim.learning_rate``); the round-trip YAML library (ruamel.yaml)
changes those values and nothing else. The input file is never overwritten unless asked.
"""

from __future__ import annotations

import difflib
import io
from pathlib import Path
from typing import Any

from nandoctor.errors import UsageError


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
        type(None), lambda representer, _: representer.represent_scalar("tag:yaml.org,2002:null", "null"))
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
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"config file {path} is not valid YAML: {first}") from exc
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


def apply_fixes(doc: Any, findings: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Set each fix's dotted keys in ``doc`` (first finding wins); returns changes and unknown keys."""
    changes, missing, done = [], [], set()
    for finding in findings:
        for dotted, value in finding["fix"]["config"].items():
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
            changes.append({"key": dotted, "old": plain(old), "new": plain(node[parts[-1]]), "code": finding["code"]})
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
    return "".join(difflib.unified_diff(original.splitlines(keepends=True), fixed.splitlines(keepends=True),
                                        fromfile=source or "config", tofile=target))
