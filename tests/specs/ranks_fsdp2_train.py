"""An FSDP2 training loop under nandoctor.Guard (run by torchrun): rank 1's batch at step 3 holds a NaN.

The guard checks every 2 steps, so the failing window is steps 2-3: replay re-runs step 2 from the
joined shards and compares its loss with the recorded one."""

import sys

import torch.distributed as dist

from tests.specs.ranks import _images, fsdp2_conv, train_under_guard

dist.init_process_group("gloo")
data = _images(seed=1 + dist.get_rank(), count=6)
train_under_guard(fsdp2_conv()["model"], data, sys.argv[1], "tests/specs/ranks.py:fsdp2_conv", check_every=2)
dist.destroy_process_group()
