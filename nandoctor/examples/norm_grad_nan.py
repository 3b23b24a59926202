"""A hand-written norm penalty over token vectors; padded ones are all zero: sqrt(0) has gradient inf."""

import torch
from torch import nn
from torch.nn import functional as F

from nandoctor.examples.common import Classifier, make_batches


class NormPenalty(nn.Module):
    """Keeps token vectors near unit length; the norm of a padded, all-zero vector has no gradient."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        length = hidden.pow(2).sum(-1).sqrt()  # the bug: sqrt at 0 has an infinite gradient
        return (length - 1.0).pow(2).mean()


class RegularizedClassifier(Classifier):
    def __init__(self):
        super().__init__()
        self.regularizer = NormPenalty()

    def forward(self, batch):
        hidden = self.encoder(batch["tokens"], batch["features"], batch["mask"])
        pooled = hidden.sum(1) / batch["mask"].sum(1, keepdim=True).clamp_min(1)
        return {"task": F.cross_entropy(self.head(pooled), batch["labels"]), "norm": self.regularizer(hidden)}


def build(lambda_norm: float = 0.1):
    return {
        "model": RegularizedClassifier(),
        "data": make_batches(),
        "loss_weights": {"norm": lambda_norm},
        "config": {"lambda_norm": lambda_norm},
    }
