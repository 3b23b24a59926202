"""Throughput of ``nandoctor scan`` against a plain no-grad forward loop over the same loader, in one run.

The 10M-parameter benchmark transformer (scripts/bench_trace.py) over a DataLoader of token
batches. Runs the two loops interleaved (plain, scan, plain, scan, ...) so machine noise hits
both alike, and prints batches/s of each, by wall clock and by process CPU time (the one to read
on a busy shared machine), and the ratio scan/plain (target: at least 0.8).

    python scripts/bench_scan.py [--batches 12] [--rounds 5] [--threads 1]

With ``--nproc N`` it compares instead ``nandoctor scan`` in one process and under
``torchrun --nproc_per_node=N`` (one thread per process) on the same data: samples per second from
each run's own timing (``seconds`` in the JSON, process start and model build excluded), and the
ratio (target: at least 1.6x with 2 processes on a 2-core machine).

    python scripts/bench_scan.py --nproc 2 [--batches 24]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from bench_trace import loss_fn
from benchtools import model_benchmark
from torch.utils.data import DataLoader, TensorDataset

from nandoctor.scan import run_scan
from nandoctor.spec import validate


def scan_rate(nproc: int, args) -> tuple[float, dict]:
    """Samples per second of one ``nandoctor scan`` run with ``nproc`` processes (1: no torchrun)."""
    spec = str(Path(__file__).resolve().parent / "bench_scan_spec.py") + ":build"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "NANDOCTOR_BENCH_BATCHES": str(args.batches),
        "NANDOCTOR_BENCH_BATCH": str(args.batch),
        "NANDOCTOR_BENCH_LENGTH": str(args.length),
    }
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    command = [*launcher, "-m", "nandoctor", "scan", spec, "--format", "json"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode not in (0, 1):
        raise SystemExit(f"scan with {nproc} process(es) failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout)
    return result["samples_scanned"] / result["seconds"], result


def compare_processes(args) -> None:
    one, alone = scan_rate(1, args)
    many, together = scan_rate(args.nproc, args)
    print(
        f"data: {args.batches} batches of {args.batch}x{args.length}; one thread per process; torch {torch.__version__}"
    )
    print(f"nandoctor scan, 1 process  : {one:8.1f} samples/s ({alone['batches_scanned']} batches)   1.00x")
    print(
        f"nandoctor scan, {args.nproc} processes: {many:8.1f} samples/s ({together['batches_scanned']} batches, "
        f"{together['ranks']} ranks)   {many / one:.2f}x  (target >= 1.6x with 2 processes on 2 cores)"
    )


def main() -> None:
    args, model = model_benchmark(__doc__, threads=1, batches=12, rounds=5, nproc=0)
    if args.nproc:
        compare_processes(args)
        return
    n = args.batches * args.batch
    dataset = TensorDataset(torch.randint(0, 4000, (n, args.length)), torch.randint(0, 10, (n,)))
    loader = DataLoader(dataset, batch_size=args.batch)
    setup = validate({"model": model, "data": loader, "loss": loss_fn}, "bench")

    def plain() -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        model.train()
        with torch.no_grad():
            for batch in loader:
                loss_fn(model, batch)
        return args.batches / (time.perf_counter() - wall), args.batches / (time.process_time() - cpu)

    def scan() -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        result = run_scan(setup, None, False, 1000.0, lambda *a: None)
        assert result["batches_scanned"] == args.batches and not result["findings"]
        return args.batches / (time.perf_counter() - wall), args.batches / (time.process_time() - cpu)

    plain()  # warm-up
    rates: dict[str, list[tuple[float, float]]] = {"plain": [], "scan": []}
    for number in range(args.rounds):
        for kind, run in (("plain", plain), ("scan", scan)) if number % 2 == 0 else (("scan", scan), ("plain", plain)):
            rates[kind].append(run())
    plain_rate, scan_rate = (statistics.median(r[0] for r in rates[k]) for k in ("plain", "scan"))
    plain_cpu, scan_cpu = (statistics.median(r[1] for r in rates[k]) for k in ("plain", "scan"))
    print(
        f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, {args.batches} batches of "
        f"{args.batch}x{args.length}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(f"plain no-grad forward loop : {plain_rate:7.2f} batches/s wall  {plain_cpu:7.2f} per CPU-s   1.00x")
    print(
        f"nandoctor scan             : {scan_rate:7.2f} batches/s wall  {scan_cpu:7.2f} per CPU-s   "
        f"{scan_rate / plain_rate:.2f}x wall, {scan_cpu / plain_cpu:.2f}x CPU  (target >= 0.80x)"
    )


if __name__ == "__main__":
    main()
