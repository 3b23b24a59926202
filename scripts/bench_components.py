"""Cost of the loss-component probe against one training step, measured in one run.

The probe takes one forward pass and one backward pass per component (retaining the graph in
between). With K components the expected cost is about (1 forward + K backward) / (1 forward
+ 1 backward) of a plain step. Prints both times and the ratio.

    python scripts/bench_components.py [--components 3] [--threads 2]
"""

from __future__ import annotations

import argparse

import torch
from benchtools import median_time
from torch import nn
from torch.nn import functional as F

from nandoctor.probes.components import component_gradients
from nandoctor.runner import open_context
from nandoctor.settings import Settings
from nandoctor.spec import validate


def build(components: int):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 2048), nn.GELU(), nn.Linear(2048, 2048), nn.GELU(), nn.Linear(2048, 512))

    def loss(m, batch):
        out = m(batch)
        return {f"term{i}": F.mse_loss(out[:, i::components], batch[:, i::components]) for i in range(components)}

    data = [torch.randn(256, 512) for _ in range(2)]
    return {"model": model, "data": data, "loss": loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--components", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    setup = validate(build(args.components), "bench")
    with open_context(setup, Settings()) as ctx:
        batch = ctx.batches[0]

        def plain():
            setup.model.zero_grad(set_to_none=True)
            ctx.loss(batch).total.backward()

        def probe():
            component_gradients(ctx, batch)

        plain_s, probe_s = median_time(plain), median_time(probe)
    print(f"{args.components} components, {sum(p.numel() for p in setup.model.parameters()) / 1e6:.1f}M parameters")
    print(f"plain forward + backward of the total : {plain_s * 1e3:7.1f} ms   1.00x")
    print(
        f"component probe (1 fwd + {args.components} bwd)        : {probe_s * 1e3:7.1f} ms   {probe_s / plain_s:.2f}x"
    )


if __name__ == "__main__":
    main()
