"""A small token + feature classifier shared by the examples; each example breaks one thing."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

VOCAB, FEATURES, CLASSES, WIDTH = 1000, 4, 5, 32


class Encoder(nn.Module):
    def __init__(self, vocab: int = VOCAB):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, WIDTH)
        self.feature_proj = nn.Linear(FEATURES, WIDTH)
        self.block = nn.Sequential(
            nn.LayerNorm(WIDTH), nn.Linear(WIDTH, 2 * WIDTH), nn.GELU(), nn.Linear(2 * WIDTH, WIDTH)
        )

    def forward(self, tokens: torch.Tensor, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(tokens) + self.feature_proj(features)
        x = x + self.block(x)
        return x * mask.unsqueeze(-1)  # padded positions are exactly zero


class Classifier(nn.Module):
    def __init__(self, vocab: int = VOCAB, head: nn.Module | None = None):
        super().__init__()
        self.encoder = Encoder(vocab)
        self.head = head if head is not None else nn.Linear(WIDTH, CLASSES)

    def forward(self, batch: dict) -> torch.Tensor:
        hidden = self.encoder(batch["tokens"], batch["features"], batch["mask"])
        pooled = hidden.sum(1) / batch["mask"].sum(1, keepdim=True).clamp_min(1)
        return self.head(pooled)


def make_batches(
    count: int = 4, size: int = 16, length: int = 12, max_id: int = VOCAB - 1, seed: int = 0
) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    # the class is read from the pulses' mean features (the tokens are context): a signal that held-out
    # batches share with the training ones, so a healthy run really learns it
    readout = torch.randn(FEATURES, CLASSES, generator=generator)
    batches = []
    for _ in range(count):
        tokens = torch.randint(0, max_id + 1, (size, length), generator=generator)
        features = torch.randn(size, length, FEATURES, generator=generator)
        lengths = torch.randint(3, length + 1, (size,), generator=generator)
        mask = (torch.arange(length)[None, :] < lengths[:, None]).float()
        pooled = (features * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        labels = (pooled @ readout).argmax(-1)
        batches.append({"tokens": tokens, "features": features, "mask": mask, "labels": labels})
    return batches


def cross_entropy_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    return F.cross_entropy(model(batch), batch["labels"])
