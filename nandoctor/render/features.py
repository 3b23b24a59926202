"""Renderers for ``feature-stats``: a table, JSON, and normalization snippets to paste."""

from __future__ import annotations

import json
from typing import Any

from nandoctor.render.common import render_json

_HEADERS = [
    "column",
    "count",
    "missing",
    "inf",
    "min",
    "p1",
    "p50",
    "p99",
    "max",
    "mean",
    "std",
    "zero %",
    "distinct",
    "flags",
]


def _g(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def render_table(result: dict[str, Any]) -> str:
    from tabulate import tabulate

    rows = []
    for name, c in result["columns"].items():
        distinct = (
            "-" if c["distinct"] is None else (f">{c['distinct']}" if c["distinct_capped"] else str(c["distinct"]))
        )
        zero = "-" if c["zero_share"] is None else f"{100 * c['zero_share']:.1f}"
        rows.append(
            [
                name,
                _g(c["count"]),
                _g(c["missing"]),
                _g(c["posinf"] + c["neginf"]),
                _g(c["min"]),
                _g(c["p1"]),
                _g(c["p50"]),
                _g(c["p99"]),
                _g(c["max"]),
                _g(c["mean"]),
                _g(c["std"]),
                zero,
                distinct,
                ", ".join(f["flag"] for f in c["flags"]) or "ok",
            ]
        )
    lines = [
        f"{result['rows']:,} rows in {len(result['files'])} file(s)",
        tabulate(rows, headers=_HEADERS, tablefmt="simple", disable_numparse=True),
    ]
    flagged = [(name, f) for name, c in result["columns"].items() for f in c["flags"]]
    if flagged:
        lines += ["", "Flags:"] + [f"  {name}: {f['flag']}: {f['reason']}" for name, f in flagged]
    if result["skipped_non_numeric"]:
        lines += ["", "not numeric, skipped: " + ", ".join(result["skipped_non_numeric"])]
    if result["missing_columns"]:
        lines += ["", "asked for but not found: " + ", ".join(result["missing_columns"])]
    for path, error in result["errors"].items():
        lines.append(f"could not read {path}: {error}")
    return "\n".join(lines)


def _is_id(column: dict[str, Any]) -> bool:
    return any(f["flag"] == "integer_ids" for f in column["flags"])


def _quoted(name: str) -> str:
    """A column name as a one-line string literal, valid in YAML and in Python alike: a name with a
    newline or a quote must not put a line of its own into the snippet the user pastes."""
    return json.dumps(name)


def render_norm_yaml(result: dict[str, Any]) -> str:
    lines = ["# standardize each feature as (x - mean) / std  (nandoctor feature-stats)"]
    for column, c in result["columns"].items():
        name = _quoted(column)
        norm = c["normalization"]
        if norm is None:
            lines.append(f"# {name}: constant or empty, drop it")
        elif norm["transform"] == "log1p":
            lines.append(
                f"{name}: {{transform: log1p, mean: {norm['mean']:.6g}, std: {norm['std']:.6g}}}"
                "  # heavy tail: standardize log1p(x)"
            )
        else:
            note = f"  # integer ids: better embedded, nn.Embedding({int(c['max']) + 1}, dim)" if _is_id(c) else ""
            lines.append(f"{name}: {{mean: {norm['mean']:.6g}, std: {norm['std']:.6g}}}{note}")
    return "\n".join(lines)


def render_norm_python(result: dict[str, Any]) -> str:
    names, means, stds, notes = [], [], [], []
    for column, c in result["columns"].items():
        name = _quoted(column)
        norm = c["normalization"]
        if norm is None:
            names.append(name)
            means.append(0.0)
            stds.append(1.0)
            notes.append(f"# {name}: constant or empty: drop it (left as mean 0, std 1)")
            continue
        if _is_id(c):
            notes.append(f"# {name}: integer ids: better embedded, nn.Embedding({int(c['max']) + 1}, dim)")
        if norm["transform"] == "log1p":
            notes.append(f"# {name}: heavy tail: apply torch.log1p to it before standardizing")
        names.append(name)
        means.append(norm["mean"])
        stds.append(norm["std"])
    fmt = ", ".join
    return "\n".join(
        [
            f"# feature order: {fmt(names)}",
            *notes,
            f'self.register_buffer("feature_mean", torch.tensor([{fmt(f"{m:.6g}" for m in means)}]))',
            f'self.register_buffer("feature_std", torch.tensor([{fmt(f"{s:.6g}" for s in stds)}]))',
            "# in forward: x = (x - self.feature_mean) / self.feature_std",
        ]
    )


def render_features(result: dict[str, Any], fmt: str, emit_norm: str | None) -> str:
    if emit_norm == "yaml":
        return render_norm_yaml(result)
    if emit_norm == "python":
        return render_norm_python(result)
    return render_json(result) if fmt == "json" else render_table(result)
