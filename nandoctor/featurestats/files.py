"""``nandoctor feature-stats``: stream parquet/CSV files and summarize every numeric column.

Parquet is read batch by batch (pyarrow), CSV/TSV through pyarrow's streaming reader; each
column folds into a :class:`StreamingColumn`, so memory does not grow with the files. One bad
file is reported and skipped; the rest are still analysed.
"""

from __future__ import annotations

import glob
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from nandoctor.errors import UsageError, describe
from nandoctor.featurestats.columns import FLAG_SEVERITY, StreamingColumn, normalization

SUFFIXES = (".parquet", ".pq", ".csv", ".tsv")
BATCH_ROWS = 262_144


def discover(paths: list[str]) -> list[Path]:
    """Files, folders (searched recursively) and glob patterns -> the data files, sorted."""
    found: list[Path] = []
    for raw in paths:
        matches = sorted(glob.glob(raw, recursive=True)) if glob.has_magic(raw) else [raw]
        if not matches:
            raise UsageError(f"no files match {raw}")
        for match in matches:
            path = Path(match)
            if path.is_dir():
                found += sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
            elif path.is_file():
                found.append(path)
            else:
                raise UsageError(f"no such file or folder: {raw}")
    if not found:
        raise UsageError(f"no .parquet, .csv or .tsv files in {', '.join(paths)}")
    return list(dict.fromkeys(found))


def _numeric(field_type: Any) -> bool:
    """Numbers, and the null type: a column whose every value is missing (an all-NaN CSV column)."""
    import pyarrow as pa

    return (
        pa.types.is_integer(field_type)
        or pa.types.is_floating(field_type)
        or pa.types.is_boolean(field_type)
        or pa.types.is_decimal(field_type)
        or pa.types.is_null(field_type)
    )


def _batches(path: Path, columns: list[str] | None) -> Iterator[Any]:
    """Record batches of one file, a few hundred thousand rows at a time."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        file = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)  # pre_buffer holds whole row groups
        names = [f.name for f in file.schema_arrow if _numeric(f.type)]
        chosen = [n for n in names if columns is None or n in columns]
        yield file.schema_arrow
        if chosen:
            yield from file.iter_batches(batch_size=BATCH_ROWS, columns=chosen)
        return
    delimiter = "\t" if suffix == ".tsv" else ","
    reader = pacsv.open_csv(
        path, parse_options=pacsv.ParseOptions(delimiter=delimiter), read_options=pacsv.ReadOptions(block_size=1 << 24)
    )
    yield reader.schema
    yield from reader


def _fold(batch: Any, columns: dict[str, StreamingColumn], wanted: list[str] | None, seed: int) -> int:
    import pyarrow as pa

    for name, array in zip(batch.schema.names, batch.columns):
        if (wanted is not None and name not in wanted) or not _numeric(array.type):
            continue
        column = _column(columns, name, array.type, seed)
        if pa.types.is_null(array.type):
            column.add(np.empty(0), len(array))
            continue
        if pa.types.is_decimal(array.type):
            array = array.cast(pa.float64())
        nulls = array.null_count
        values = array.drop_null().to_numpy(zero_copy_only=False) if nulls else array.to_numpy(zero_copy_only=False)
        column.add(values, nulls)
    return batch.num_rows


def _column(columns: dict[str, StreamingColumn], name: str, field_type: Any, seed: int) -> StreamingColumn:
    """The column's accumulator; one that has seen only nulls takes the first real type."""
    column = columns.get(name)
    if column is None or (column.dtype == "null" and str(field_type) != "null" and not column.count):
        fresh = StreamingColumn(name, str(field_type), seed=seed + (len(columns) if column is None else 0))
        if column is not None:
            fresh.missing = column.missing
        column = columns[name] = fresh
    return column


def _mixed_types(
    name: str, numeric_in: dict[str, str], text_in: dict[str, str], per_file: dict[str, int]
) -> dict[str, str]:
    """The flag of a column that is numbers in some files and text in others."""
    lost = sum(per_file.get(path, 0) for path in text_in)
    shown = ", ".join(f"{type_} in {Path(path).name}" for path, type_ in list(text_in.items())[:3])
    numbers = ", ".join(sorted(set(numeric_in.values())))
    return {
        "flag": "mixed_types",
        "severity": FLAG_SEVERITY["mixed_types"],
        "reason": f"{numbers} in {len(numeric_in)} file(s) but {shown}: the {lost:,} rows of those "
        "files are not counted; make the column one type in every file",
    }


def analyse(
    paths: list[str],
    columns: list[str] | None = None,
    limit_rows: int | None = None,
    progress: Callable[[str], None] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Summaries of every numeric column over all files, plus per-file rows and errors."""
    files = discover(paths)
    say = progress or (lambda message: print(message, file=sys.stderr, flush=True))
    stats: dict[str, StreamingColumn] = {}
    rows, per_file, errors, skipped_text = 0, {}, {}, set()
    numeric_in: dict[str, dict[str, str]] = {}  # column -> {file: type}
    text_in: dict[str, dict[str, str]] = {}
    last_report = time.monotonic()
    for number, path in enumerate(files, 1):
        file_rows = 0
        try:
            batches = _batches(path, columns)
            schema = next(batches)
            for field in schema:
                if columns is not None and field.name not in columns:
                    continue
                kinds = numeric_in if _numeric(field.type) else text_in
                kinds.setdefault(field.name, {})[str(path)] = str(field.type)
                if _numeric(field.type):  # a file with no rows still has its columns
                    _column(stats, field.name, field.type, seed)
            skipped_text.update(f.name for f in schema if not _numeric(f.type))
            for batch in batches:
                if limit_rows is not None and rows >= limit_rows:
                    break
                if limit_rows is not None and rows + batch.num_rows > limit_rows:
                    batch = batch.slice(0, limit_rows - rows)
                added = _fold(batch, stats, columns, seed)
                rows, file_rows = rows + added, file_rows + added
                if time.monotonic() - last_report > 2:
                    say(f"nandoctor: {path.name} ({number}/{len(files)}): {rows:,} rows")
                    last_report = time.monotonic()
        except Exception as exc:  # a corrupt, truncated or unreadable file: report it, go on
            errors[str(path)] = describe(exc)
            say(f"nandoctor: skipping {path}: {errors[str(path)]}")
            continue
        per_file[str(path)] = file_rows
        if limit_rows is not None and rows >= limit_rows:
            break
    missing = sorted(set(columns or []) - set(stats))
    summaries = {name: _with_norm(column) for name, column in stats.items()}
    for name, summary in summaries.items():
        mixed = {p: t for p, t in text_in.get(name, {}).items() if p in per_file}
        if mixed:
            summary["flags"].append(_mixed_types(name, numeric_in.get(name, {}), mixed, per_file))
    return {
        "files": per_file,
        "errors": errors,
        "rows": rows,
        "columns": summaries,
        "skipped_non_numeric": sorted(skipped_text - set(stats)),
        "missing_columns": missing,
    }


def flagged_at_or_above(result: dict[str, Any], fail_on: str) -> list[str]:
    """Columns with a flag at or above ``fail_on`` (``--fail-on``; ``never`` flags nothing)."""
    from nandoctor.findings import at_or_above

    if fail_on == "never":
        return []
    return [
        name
        for name, column in result["columns"].items()
        if any(at_or_above(flag["severity"], fail_on) for flag in column["flags"])
    ]


def _with_norm(column: StreamingColumn) -> dict[str, Any]:
    summary = column.summary()
    return dict(summary.to_dict(), normalization=normalization(summary))


def unusable(result: dict[str, Any]) -> str | None:
    """Why nothing could be analysed, or None."""
    if not result["files"]:
        return "no file could be read: " + "; ".join(f"{Path(p).name}: {e}" for p, e in result["errors"].items())
    if result["rows"] == 0 and result["columns"]:
        return "the files hold no rows"
    if not result["columns"]:
        text = result["skipped_non_numeric"]
        return "no numeric columns" + (f" (non-numeric: {', '.join(text[:10])})" if text else "")
    if result["rows"] == 0:
        return "the files hold no rows"
    return None
