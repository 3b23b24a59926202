"""A DDP training loop under nandoctor.Guard (run by torchrun): rank 1's batch at step 3 holds a NaN."""

import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from nandoctor import Guard
from tests.specs.ranks import blobs, ce, mlp

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = DistributedDataParallel(mlp())
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
data = blobs(seed=1 + rank, count=6)
guard = Guard(model, optimizer, path=sys.argv[1], spec="tests/specs/ranks.py:ddp", check_every=1, on_failure="continue")
with guard:
    for step, (x, y) in enumerate(data):
        if step == 3 and rank == 1:
            x = x.clone()
            x[0, 0] = float("nan")
        loss = ce(model, (x, y))
        optimizer.zero_grad()
        loss.backward()
        guard.step(loss, (x, y))
        optimizer.step()
print(f"rank {rank} tripped {guard.tripped}", file=sys.stderr)
dist.destroy_process_group()
