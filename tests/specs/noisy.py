"""A build whose user code writes to file descriptor 1 behind Python's back (os.write, os.system)."""

import os

import torch
from torch import nn


def build():
    os.system("echo from-os-system-in-the-build")
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(4)]

    def loss(model, batch):
        os.write(1, b"from-os-write-in-the-loss\n")
        return nn.functional.cross_entropy(model(batch[0]), batch[1])

    return {"model": model, "data": data, "loss": loss}
