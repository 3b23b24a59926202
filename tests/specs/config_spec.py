"""A build file that reads the user's YAML training config, as real projects do."""

import torch
import yaml
from torch import nn
from torch.nn import functional as F


def _blobs(seed=0, count=5, size=64):
    g = torch.Generator().manual_seed(seed)
    centers = 2.0 * torch.randn(4, 16, generator=g)
    out = []
    for _ in range(count):
        labels = torch.randint(0, 4, (size,), generator=g)
        out.append((centers[labels] + torch.randn(size, 16, generator=g), labels))
    return out


def build(config_path: str):
    with open(config_path) as handle:
        config = yaml.safe_load(handle)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Dropout(config["model"]["dropout"]), nn.Linear(64, 4))
    return {
        "model": model,
        "data": _blobs(),
        "loss": lambda m, b: F.cross_entropy(m(b[0]), b[1]),
        "lr": config["optim"]["learning_rate"],
        "grad_clip": config["trainer"].get("gradient_clip_val"),
        "config": config,
    }
