"""The text of ``nandoctor scan``, and its progress bar on stderr (rate and ETA)."""

from __future__ import annotations

import time
from typing import Any, TextIO

from nandoctor.render.common import where_text

LISTED_PER_FINDING = 10


def render_scan(result: dict[str, Any]) -> str:
    total = result["batches_total"]
    rate = result["batches_per_s"]
    lines = [
        f"nandoctor {result['nandoctor_version']}  {result['spec']}",
        f"scanned {result['batches_scanned']}{f' of {total}' if total is not None else ''} batches "
        f"({result['samples_scanned']} samples) in {result['seconds']:.1f}s"
        + (f" ({rate:.1f} batches/s)" if rate else "")
        + (" with backward" if result["with_backward"] else "")
        + ("; INTERRUPTED: what was found so far" if result["interrupted"] else ""),
    ]
    stopped = result.get("stopped")
    if stopped:
        indices = stopped["dataset_indices"]
        lines.append(
            f"STOPPED: reading batch {stopped['batch']}"
            + (f" (dataset indices {indices[0]}..{indices[1]})" if indices else "")
            + f" raised {stopped['error']}; what follows covers the batches before it"
        )
    if not result["findings"]:
        lines.append("no bad batch found" + (" before it" if stopped else ""))
    for number, finding in enumerate(result["findings"], 1):
        lines += [
            "",
            f"{number}. [{finding['severity']}] {finding['code']}: {finding['title']}",
            f"   where:    {where_text(finding['where'])}",
            f"   fix:      {finding['fix']['advice']}",
        ]
        same = [
            p for p in result["problems"] if p["code"] == finding["code"] and p["tensor"] == finding["where"]["feature"]
        ]
        for problem in same[:LISTED_PER_FINDING]:
            sample = f" sample {problem['sample']}" if problem["sample"] is not None else ""
            index = f" (dataset index {problem['dataset_index']})" if problem["dataset_index"] is not None else ""
            lines.append(f"   - batch {problem['batch']}{sample}{index}: {problem['detail']}")
        if finding["evidence"]["count"] > LISTED_PER_FINDING:
            lines.append(
                f"   ... {finding['evidence']['count'] - LISTED_PER_FINDING} more (--format json lists up to 1000)"
            )
    return "\n".join(lines)


class ProgressBar:
    """``scan 120/500 batches  45.2 batches/s  ETA 8s``: redrawn in place on a terminal, a line every 5s in a log."""

    def __init__(self, stream: TextIO, interval_s: float = 0.25, log_interval_s: float = 5.0):
        self.stream, self.start, self.last = stream, time.monotonic(), 0.0
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.interval = interval_s if self.tty else log_interval_s

    def __call__(self, done: int, total: int | None, final: bool) -> None:
        now = time.monotonic()
        if not final and now - self.last < self.interval:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        eta = f"  ETA {_duration((total - done) / rate)}" if total and rate > 0 and not final else ""
        text = f"nandoctor: scan {done}/{total if total is not None else '?'} batches  {rate:.1f} batches/s{eta}"
        if self.tty:
            self.stream.write("\r" + text.ljust(72) + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else (f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s")
    )
