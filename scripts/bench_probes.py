"""Cost of the activation-reading probes (saturation, dead units) against a plain training step.

Same ~10M-parameter transformer as ``bench_trace.py``, same cached batches for every probe.
Prints the median time of
  plain:      forward + backward over the cached batches
  trace:      nandoctor's shared traced pass over them (read by several probes, paid once)
  saturation: the saturation probe alone, the shared trace already recorded
  dead_units: the dead-units probe alone, the shared trace already recorded
and each one's ratio to plain.

    python scripts/bench_probes.py [--repeats 3] [--threads 2] [--batches 4]
"""

from __future__ import annotations

import torch
from bench_trace import loss_fn
from benchtools import median_time, model_benchmark

from nandoctor.context import RunContext
from nandoctor.measure.trace import traced
from nandoctor.probes.dead_units import DeadUnitsProbe
from nandoctor.probes.saturation import SaturationProbe
from nandoctor.settings import Settings
from nandoctor.spec import validate


def main() -> None:
    args, model = model_benchmark(__doc__, threads=2, repeats=3, batches=4)
    batches = [
        (torch.randint(0, 4000, (args.batch, args.length)), torch.randint(0, 10, (args.batch,)))
        for _ in range(args.batches)
    ]
    setup = validate({"model": model, "data": batches, "loss": loss_fn}, "bench")

    def context() -> RunContext:
        return RunContext(setup=setup, batches=batches, settings=Settings())

    def plain():
        for batch in batches:
            model.zero_grad(set_to_none=True)
            loss_fn(model, batch).backward()

    def trace():
        traced(context())

    def probe(kind):
        ctx = context()
        traced(ctx)  # the shared pass is paid once per run, by whichever probe comes first

        def step():
            ctx.shared.pop("activity", None)  # anything the probe itself records
            kind().run(ctx)

        return step

    steps = {"plain": plain, "trace": trace, "saturation": probe(SaturationProbe), "dead_units": probe(DeadUnitsProbe)}
    times = {name: median_time(step, args.repeats) for name, step in steps.items()}
    print(
        f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, {args.batches} batches of "
        f"{args.batch}x{args.length}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    for name, seconds in times.items():
        print(f"{name:<11}: {seconds * 1e3:9.1f} ms   {seconds / times['plain']:6.2f}x plain")


if __name__ == "__main__":
    main()
