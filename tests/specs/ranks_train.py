"""A DDP training loop under nandoctor.Guard (run by torchrun): rank 1's batch at step 3 holds a NaN."""

import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from tests.specs.ranks import blobs, mlp, train_under_guard

dist.init_process_group("gloo")
torch.manual_seed(0)
data = blobs(seed=1 + dist.get_rank(), count=6)
train_under_guard(DistributedDataParallel(mlp()), data, sys.argv[1], "tests/specs/ranks.py:ddp", check_every=1)
dist.destroy_process_group()
