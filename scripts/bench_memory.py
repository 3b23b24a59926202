"""Peak memory of ``diagnose`` against a plain training step, each in its own process.

The ~10M-parameter transformer of ``bench_trace.py`` on the CPU. Each measurement runs in a
fresh subprocess (peak RSS from ``ru_maxrss``), so one cannot inherit the other's high-water mark:
  plain:    one AdamW training step (forward, backward, optimizer step: its state exists)
  training: three AdamW steps (from the second on, the optimizer state lives through the step)
  diagnose: every probe over the same model and batches (the sweep cut to a few steps at two
            rates: its memory does not grow with the steps)
Prints both peaks, their ratio, and the target: the plain step's peak plus one copy of the
weights and of the optimizer state (AdamW: two more copies).

    python scripts/bench_memory.py [--threads 2] [--no-dynamics]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

MIB = 1024 * 1024


def _setup(batches: int, batch: int, length: int) -> dict:
    import torch
    from bench_trace import Transformer, loss_fn

    torch.manual_seed(0)
    model = Transformer()
    g = torch.Generator().manual_seed(1)
    data = [
        (torch.randint(0, 4000, (batch, length), generator=g), torch.randint(0, 10, (batch,), generator=g))
        for _ in range(batches)
    ]
    return {"model": model, "data": data, "loss": loss_fn, "lr": 1e-4}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB  # KiB on Linux


def child(mode: str, args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    built = _setup(4, args.batch, args.length)
    model = built["model"]
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    before = _rss_mib()
    if mode in ("plain", "training"):  # one step, or three (the optimizer state then stays)
        optimizer = torch.optim.AdamW(model.parameters(), lr=built["lr"])
        for step in range(1 if mode == "plain" else 3):
            optimizer.zero_grad(set_to_none=True)
            built["loss"](model, built["data"][step]).backward()
            optimizer.step()
    else:
        from nandoctor.probes import PROBES
        from nandoctor.runner import run_probes
        from nandoctor.settings import load_settings
        from nandoctor.spec import validate

        probes = sorted((p for p in PROBES if args.dynamics or p.name != "dynamics"), key=lambda p: p.order)
        settings = load_settings(None, {"sweep_steps": 3, "sweep_decades_down": 1, "sweep_decades_up": 0})
        run_probes(validate(built, "bench"), settings, probes, progress=lambda message: None)
    return {"peak_mib": _rss_mib(), "built_mib": before, "weights_mib": params / MIB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--no-dynamics", dest="dynamics", action="store_false", help="leave the sweep out")
    parser.add_argument("--child", choices=["plain", "training", "diagnose"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    results = {}
    for mode in ("plain", "training", "diagnose"):
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            mode,
            "--threads",
            str(args.threads),
            "--batch",
            str(args.batch),
            "--length",
            str(args.length),
        ]
        if not args.dynamics:
            command.append("--no-dynamics")
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[mode] = json.loads(output.strip().splitlines()[-1])
    plain, diagnose = results["plain"], results["diagnose"]
    weights = plain["weights_mib"]
    target = plain["peak_mib"] + weights + 2 * weights  # + one copy of the weights and of AdamW's state
    print(
        f"model: {weights * MIB / 4 / 1e6:.1f}M float32 parameters ({weights:.0f} MiB), batch "
        f"{args.batch}x{args.length}, {args.threads} threads, sweep {'on' if args.dynamics else 'off'}"
    )
    print(f"after building model and batches: {plain['built_mib']:7.0f} MiB")
    print(f"plain AdamW step peak           : {plain['peak_mib']:7.0f} MiB   1.00x")
    print(
        f"three AdamW steps peak          : {results['training']['peak_mib']:7.0f} MiB   "
        f"{results['training']['peak_mib'] / plain['peak_mib']:.2f}x  (the optimizer state now lives through a step)"
    )
    print(
        f"nandoctor diagnose peak         : {diagnose['peak_mib']:7.0f} MiB   "
        f"{diagnose['peak_mib'] / plain['peak_mib']:.2f}x"
    )
    print(
        f"target (plain + weights + AdamW state): {target:7.0f} MiB   "
        f"{target / plain['peak_mib']:.2f}x  -> {'within' if diagnose['peak_mib'] <= target else 'OVER'}"
    )
    print(
        f"above the built process: plain +{plain['peak_mib'] - plain['built_mib']:.0f} MiB, "
        f"diagnose +{diagnose['peak_mib'] - diagnose['built_mib']:.0f} MiB"
    )


if __name__ == "__main__":
    main()
