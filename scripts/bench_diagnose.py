"""A whole ``nandoctor.diagnose`` of the 10M-parameter benchmark transformer: where the time goes.

Builds the learnable token task of ``bench_lr_sweep.py`` (AdamW at 1e-3), runs ``diagnose`` on it
and prints each probe's wall time, the total, the rates the sweep judged, and the total as a
multiple of one plain AdamW step measured in the same run (the machine is noisy: compare ratios).

    python scripts/bench_diagnose.py [--threads 2] [--batch 16] [--length 128] [--cuda 1]
"""

from __future__ import annotations

import re
import sys
import time
from types import SimpleNamespace

import torch
from bench_lr_sweep import build, plain_step_time
from benchtools import model_benchmark

import nandoctor


def main() -> None:
    args, _ = model_benchmark(__doc__, threads=2, cuda=0)
    spec = build(args.batch, args.length)
    device = torch.device("cuda" if args.cuda else "cpu")
    spec["device"] = str(device)
    marks: list[tuple[float, str]] = []
    began = time.perf_counter()

    def progress(line: str) -> None:
        now = time.perf_counter() - began
        print(f"{now:6.1f}s {line}", file=sys.stderr, flush=True)
        match = re.match(r"nandoctor: \[\d+/\d+\] (\w+)", line)
        if match:
            marks.append((now, match.group(1)))

    report = nandoctor.diagnose(spec, progress=progress)
    total = time.perf_counter() - began
    model = spec["model"].to(device)
    step_s = plain_step_time(SimpleNamespace(model=model), [(x.to(device), y.to(device)) for x, y in spec["data"][:6]])
    sweep = report.probes.get("dynamics", {})
    print(
        f"model: {sum(p.numel() for p in spec['model'].parameters()) / 1e6:.1f}M parameters, "
        f"batch {args.batch}x{args.length}, "
        f"{torch.cuda.get_device_name() if args.cuda else f'{torch.get_num_threads()} threads'}"
    )
    print(f"{'probe':<12} {'seconds':>8} {'plain steps':>12}")
    ends = [m[0] for m in marks[1:]] + [total]
    for (start, name), end in zip(marks, ends):
        print(f"{name:<12} {end - start:8.1f} {(end - start) / step_s:12.1f}")
    runs = sweep.get("runs", [])
    judged = ", ".join("%.3g:%s" % (r["lr"], r["verdict"]) for r in runs)
    print(
        f"rates judged: {len(runs)} ({judged}); "
        f"optimizer steps {sweep.get('steps_run')}; not run {sweep.get('rates_not_run')}, "
        f"not continued {sweep.get('rates_not_continued')}"
    )
    print(f"verdict {report.verdict}; findings {[f.code for f in report.findings]}")
    for finding in report.findings[:2]:
        print(f"  {finding.severity.value} {finding.code}: {finding.title}")
    print(f"plan: {sweep.get('plan')}")
    print(f"plain AdamW step (median): {step_s:.3f} s")
    print(f"diagnose total           : {total:.1f} s = {total / step_s:.0f} plain steps")


if __name__ == "__main__":
    main()
