"""Run every zoo case (tests/zoo) through nandoctor diagnose and print a markdown table.

Rows: architectures. Columns: the healthy twin, then each fault. A cell is ✓ or ✗, the first two
finding codes (for a healthy case: the critical/warning findings, or "healthy"), and the seconds.

    PYTHONPATH=. python scripts/zoo_table.py [--arch bert,mlp] [--reports DIR] [--set NAME=VALUE ...]

``--set sweep_cpu_gflops=0.000001`` runs every case under the shortest sweep plan, as a large
model on a CPU would get it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.zoo import ARCHS, FAULTS, ZOO  # noqa: E402
from tests.zoo.run import judge, run_case  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", help="comma-separated architectures (default: all)")
    parser.add_argument("--fault", help="comma-separated faults, 'healthy' for the twin (default: all)")
    parser.add_argument("--reports", help="write each case's JSON report into this folder")
    parser.add_argument("--set", dest="settings", action="append", default=[], help="a probe setting, NAME=VALUE")
    args = parser.parse_args()
    settings = {name: float(value) for name, _, value in (item.partition("=") for item in args.settings)}
    archs = args.arch.split(",") if args.arch else ARCHS
    faults = args.fault.split(",") if args.fault else None
    cells: dict[tuple[str, str], str] = {}
    passed = total = 0
    began = time.monotonic()
    for case in ZOO:
        column = case.fault or "healthy"
        if case.arch not in archs or (faults and column not in faults):
            continue
        missing = [m for m in case.requires if importlib.util.find_spec(m) is None]
        if missing:
            cells[(case.arch, column)] = f"skipped (no {', '.join(missing)})"
            continue
        try:
            report, seconds = run_case(case, settings)
            ok, codes = judge(case, report)
        except Exception as exc:  # a crash is a failed cell, not a failed table
            report, seconds, ok, codes = None, 0.0, False, f"raised {type(exc).__name__}: {exc}"[:80]
        total += 1
        passed += ok
        cells[(case.arch, column)] = f"{'✓' if ok else '✗'} {codes} ({seconds:.1f}s)"
        print(f"{case.id}: {cells[(case.arch, column)]}", file=sys.stderr, flush=True)
        if args.reports and report is not None:
            Path(args.reports).mkdir(parents=True, exist_ok=True)
            (Path(args.reports) / f"{case.id}.json").write_text(json.dumps(report, indent=1, default=str))
    columns = ["healthy"] + [f for f in FAULTS if not faults or f in faults]
    columns = [c for c in columns if any((a, c) in cells for a in archs)]
    print("| arch | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for arch in archs:
        print(f"| {arch} | " + " | ".join(cells.get((arch, c), "–") for c in columns) + " |")
    print(
        f"\n{passed}/{total} cases pass; {time.monotonic() - began:.0f}s in all. Expected codes: "
        "lr_too_high→lr_too_high, lr_too_low→lr_too_low, grad_clip_tiny→grad_clip_too_aggressive, "
        "amp_overflow→amp_overflow, ids_beyond_vocab→index_out_of_range, labels_out_of_range→"
        "label_out_of_range, unnormalized→unnormalized_input, nan_sample→nonfinite_input, "
        "zero_init→dead_units; healthy, float64, no_loss_key→no critical/warning finding."
    )


if __name__ == "__main__":
    main()
