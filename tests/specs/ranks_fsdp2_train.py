"""An FSDP2 training loop under nandoctor.Guard (run by torchrun): rank 1's batch at step 3 holds a NaN.

The guard checks every 2 steps, so the failing window is steps 2-3: replay re-runs step 2 from the
joined shards and compares its loss with the recorded one."""

import sys

import torch
import torch.distributed as dist

from nandoctor import Guard
from tests.specs.ranks import _images, ce, fsdp2_conv

dist.init_process_group("gloo")
rank = dist.get_rank()
model = fsdp2_conv()["model"]
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
data = _images(seed=1 + rank, count=6)
spec = "tests/specs/ranks.py:fsdp2_conv"
guard = Guard(model, optimizer, path=sys.argv[1], spec=spec, check_every=2, on_failure="continue")
with guard:
    for step, (x, y) in enumerate(data):
        if step == 3 and rank == 1:
            x = x.clone()
            x[0, 0, 0, 0] = float("nan")
        loss = ce(model, (x, y))
        optimizer.zero_grad()
        loss.backward()
        guard.step(loss, (x, y))
        optimizer.step()
print(f"rank {rank} tripped {guard.tripped}", file=sys.stderr)
dist.destroy_process_group()
