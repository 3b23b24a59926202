"""Per-column statistics in bounded memory, and the flags that say what is wrong with a column.

``StreamingColumn`` folds chunks of values into running moments (Chan et al.'s parallel
update, numerically stable), counts, a capped set of distinct integers and a fixed-size
uniform sample for quantiles. ``flag_column`` turns a summary into plain-language flags;
the diagnose input probe uses the same rules on its batches.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

SAMPLE_SIZE = 65_536
_HUGE = 1e150  # beyond this magnitude squares and sums overflow float64: scale by a power of two
DISTINCT_CAP = 1_000
_ID_NAME = re.compile(r"(^|[_\W])(id|ids|idx|index|token|code|key)s?($|[_\W])|_id$|id$", re.IGNORECASE)


@dataclass(frozen=True)
class FlagLimits:
    """The cut-offs of the column flags (the inputs probe reads them from its settings)."""

    std_max: float = 10.0  # not_normalized: std above this ...
    bound_max: float = 20.0  # ... or |p1| / |p99| above this ...
    mean_over_std: float = 5.0  # ... or |mean| above this many stds (at least 1)
    std_tiny: float = 1e-3  # not_normalized the other way: std below this with |p1|, |p99| below bound_tiny
    bound_tiny: float = 1e-2
    tail_factor: float = 10.0  # heavy_tail: max beyond p99 by this many times the p50..p99 spread
    id_min_span: int = 64  # integer_ids: at least this wide a range ...
    id_min_distinct: int = 64  # ... and this many distinct values ...
    id_distinct_share: float = 0.5  # ... covering this share of the range


@dataclass
class ColumnSummary:
    name: str
    dtype: str
    count: int = 0  # finite values
    missing: int = 0  # null or NaN
    posinf: int = 0
    neginf: int = 0
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None
    p1: float | None = None
    p50: float | None = None
    p99: float | None = None
    zero_share: float | None = None
    integer_valued: bool = False
    distinct: int | None = None  # integer columns: number of distinct values, capped
    distinct_capped: bool = False
    log1p_mean: float | None = None  # of log1p(values), for non-negative columns (from the sample)
    log1p_std: float | None = None
    flags: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class StreamingColumn:
    """Accumulate one numeric column chunk by chunk; memory does not grow with the data."""

    def __init__(self, name: str, dtype: str, seed: int = 0):
        self.name, self.dtype = name, dtype
        self.count = self.missing = self.posinf = self.neginf = self.zeros = 0
        self.mean = self.std = 0.0  # running mean and population std (not m2: it overflows near 1e308)
        self.low, self.high = np.inf, -np.inf
        self.integer_valued = True
        self.distinct: set | None = set() if dtype.startswith(("int", "uint", "bool")) else None
        self.distinct_capped = False
        self.sample = np.empty(0)
        self.rng = np.random.default_rng(seed)

    def add(self, values: np.ndarray, nulls: int = 0) -> None:
        self.missing += nulls
        values = np.asarray(values)
        if values.dtype.kind == "b":
            values = values.astype(np.int8)
        if values.dtype.kind == "f":
            finite = np.isfinite(values)
            if not finite.all():
                bad = values[~finite]
                self.missing += int(np.isnan(bad).sum())
                self.posinf += int((bad == np.inf).sum())
                self.neginf += int((bad == -np.inf).sum())
                values = values[finite]
        n = values.size
        if n == 0:
            return
        values64 = values.astype(np.float64, copy=False)
        low, high = float(values64.min()), float(values64.max())
        scale = _power_of_two(max(abs(low), abs(high))) if max(abs(low), abs(high)) > _HUGE else 1.0
        scaled = values64 / scale if scale != 1.0 else values64  # exact: a power of two
        chunk_mean = float(scaled.mean()) * scale
        chunk_std = float(np.sqrt(np.square(scaled - chunk_mean / scale).mean())) * scale
        self._merge(chunk_mean, chunk_std, n)
        self.low = min(self.low, low)
        self.high = max(self.high, high)
        self.zeros += int(np.count_nonzero(values64 == 0))
        if self.integer_valued:
            self.integer_valued = values.dtype.kind in "iub" or bool(np.all(np.mod(values64, 1) == 0))
        if self.distinct is not None and not self.distinct_capped:
            self.distinct.update(np.unique(values).tolist())
            if len(self.distinct) > DISTINCT_CAP:
                self.distinct_capped = True
                self.distinct = set(list(self.distinct)[:DISTINCT_CAP])
        self._sample(values64, n)
        self.count += n

    def _merge(self, mean: float, std: float, n: int) -> None:
        """Chan et al.'s parallel update, written for mean and std in units of a power of two
        so that values near the float64 limit do not overflow."""
        total = self.count + n
        if self.count == 0:
            self.mean, self.std = mean, std
            return
        a, b = self.count / total, n / total
        unit = _power_of_two(max(abs(self.mean), abs(mean), self.std, std))
        delta = mean / unit - self.mean / unit
        variance = a * (self.std / unit) ** 2 + b * (std / unit) ** 2 + a * b * delta * delta
        self.std = math.sqrt(variance) * unit
        self.mean = a * self.mean + b * mean

    def _sample(self, values: np.ndarray, n: int) -> None:
        """A uniform sample without replacement of everything seen, at most SAMPLE_SIZE values."""
        seen = self.count
        if seen + n <= SAMPLE_SIZE:
            self.sample = np.concatenate([self.sample, values])
            return
        keep = min(SAMPLE_SIZE, seen + n)
        from_new = int(self.rng.hypergeometric(n, seen, keep)) if seen else keep
        new_part = values[self.rng.choice(n, size=from_new, replace=False)]
        old_part = (
            self.sample[self.rng.choice(self.sample.size, size=keep - from_new, replace=False)]
            if keep - from_new
            else np.empty(0)
        )
        self.sample = np.concatenate([old_part, new_part])

    def summary(self, limits: FlagLimits = FlagLimits()) -> ColumnSummary:
        result = ColumnSummary(
            name=self.name,
            dtype=self.dtype,
            count=self.count,
            missing=self.missing,
            posinf=self.posinf,
            neginf=self.neginf,
        )
        if self.count:
            top = max(abs(self.low), abs(self.high))
            scale = _power_of_two(top) if top > _HUGE else 1.0  # interpolation must not overflow
            p1, p50, p99 = (float(v) * scale for v in np.quantile(self.sample / scale, [0.01, 0.5, 0.99]))
            result.min, result.max, result.mean = self.low, self.high, self.mean
            result.std = self.std
            result.p1, result.p50, result.p99 = p1, p50, p99
            result.zero_share = self.zeros / self.count
            result.integer_valued = self.integer_valued
            if self.low >= 0:
                logs = np.log1p(self.sample)
                result.log1p_mean, result.log1p_std = float(logs.mean()), float(logs.std())
        if self.distinct is not None:
            result.distinct, result.distinct_capped = len(self.distinct), self.distinct_capped
        result.flags = flag_column(result, limits)
        return result


def _power_of_two(value: float) -> float:
    """The largest power of two at most ``value`` (1.0 for 0): dividing by it is exact and
    leaves magnitudes below 2."""
    return math.ldexp(1.0, math.frexp(value)[1] - 1) if value > 0 else 1.0


def looks_like_ids(summary: ColumnSummary, limits: FlagLimits = FlagLimits()) -> bool:
    """Many distinct integers over a wide range: categories, not a quantity."""
    if not summary.integer_valued or summary.count == 0 or summary.max is None:
        return False
    span = summary.max - summary.min + 1
    if span < limits.id_min_span:
        return False
    if _ID_NAME.search(summary.name):
        return True
    distinct = summary.distinct
    return (
        distinct is not None
        and (summary.distinct_capped or distinct >= limits.id_min_distinct)
        and (summary.distinct_capped or distinct / span >= limits.id_distinct_share)
    )


# how much each flag harms training, read by ``feature-stats --fail-on`` as diagnose reads findings
FLAG_SEVERITY = {
    "nonfinite": "critical",
    "mixed_types": "critical",
    "not_normalized": "warning",
    "integer_ids": "warning",
    "heavy_tail": "info",
    "constant": "info",
}


def flag_column(s: ColumnSummary, limits: FlagLimits = FlagLimits()) -> list[dict[str, str]]:
    """Plain-language flags; each has a stable ``flag`` name, a ``reason`` and a ``severity``."""
    flags = _flags(s, limits)
    for flag in flags:
        flag["severity"] = FLAG_SEVERITY[flag["flag"]]
    return flags


def _flags(s: ColumnSummary, limits: FlagLimits) -> list[dict[str, str]]:
    flags = []
    total = s.count + s.missing + s.posinf + s.neginf
    if s.missing or s.posinf or s.neginf:
        flags.append(
            {
                "flag": "nonfinite",
                "reason": f"{s.missing} missing/NaN and {s.posinf + s.neginf} infinite of {total} values",
            }
        )
    if s.count == 0 or s.std is None:
        return flags
    if s.std == 0:
        flags.append({"flag": "constant", "reason": f"every value is {s.min:g}: it carries no information"})
        return flags
    ids = looks_like_ids(s, limits)
    if ids:
        flags.append(
            {
                "flag": "integer_ids",
                "reason": f"{'>' if s.distinct_capped else ''}"
                f"{s.distinct if s.distinct is not None else 'many'} distinct integers in "
                f"[{s.min:g}, {s.max:g}]: ids fed as a continuous feature; embed them instead",
            }
        )
    bound = max(abs(s.p1), abs(s.p99))
    if s.std > limits.std_max or bound > limits.bound_max or abs(s.mean) > limits.mean_over_std * max(s.std, 1.0):
        flags.append(
            {
                "flag": "not_normalized",
                "reason": f"mean {s.mean:.4g}, std {s.std:.4g}, range [{s.min:.4g}, {s.max:.4g}]: "
                "far from zero mean / unit scale; standardize it",
            }
        )
    elif s.std < limits.std_tiny and bound < limits.bound_tiny:
        flags.append(
            {"flag": "not_normalized", "reason": f"std {s.std:.3g}: so small that it is drowned by unit-scale features"}
        )
    spread_hi, spread_lo = s.p99 - s.p50, s.p50 - s.p1
    if (spread_hi > 0 and s.max - s.p50 > limits.tail_factor * spread_hi) or (
        spread_lo > 0 and s.p50 - s.min > limits.tail_factor * spread_lo
    ):
        if not ids:
            flags.append(
                {
                    "flag": "heavy_tail",
                    "reason": f"max {s.max:.4g} (min {s.min:.4g}) far beyond p99 {s.p99:.4g} (p1 "
                    f"{s.p1:.4g}): log-transform or clip before standardizing",
                }
            )
    return flags


def normalization(s: ColumnSummary) -> dict[str, float] | None:
    """Mean and std to standardize with (of log1p values for a heavy-tailed positive column)."""
    if s.count == 0 or not s.std:
        return None
    names = {f["flag"] for f in s.flags}
    if "heavy_tail" in names and s.log1p_mean is not None and s.log1p_std:
        return {"transform": "log1p", "mean": s.log1p_mean, "std": s.log1p_std}
    return {"transform": "none", "mean": s.mean, "std": s.std}
