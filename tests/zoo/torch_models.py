"""Pure-torch architectures: an LSTM text classifier, a small U-Net, a tabular regression MLP.

Each builder takes ``fault`` (None: the healthy twin) and needs nothing but torch.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from tests.zoo.common import (
    ADAM_LOW_LR_UNET,
    BATCH_SIZE,
    BATCHES,
    IMAGE,
    SEQ_LEN,
    SGD_LOW_LR_SLOW,
    VOCAB,
    common_faults,
    gen,
    zero_,
)


def _double(spec: dict) -> None:
    """float64: model and float data in double precision (a healthy setup)."""
    spec["model"].double()

    def cast(value):
        if isinstance(value, torch.Tensor):
            return value.double() if value.is_floating_point() else value
        if isinstance(value, dict):
            return {k: cast(v) for k, v in value.items()}
        if isinstance(value, (tuple, list)):
            return type(value)(cast(v) for v in value)
        return value

    spec["data"] = [cast(batch) for batch in spec["data"]]


# --- LSTM text classifier ---------------------------------------------------------------------


class LSTMClassifier(nn.Module):
    def __init__(self, vocab: int = VOCAB, width: int = 32, classes: int = 2):
        super().__init__()
        self.embedding = nn.Embedding(vocab, width)
        self.lstm = nn.LSTM(width, width, num_layers=2, batch_first=True)
        self.head = nn.Linear(width, classes)

    def forward(self, tokens):
        out, _ = self.lstm(self.embedding(tokens))
        return self.head(out[:, -1])


def _lstm_loss(model, batch):
    return F.cross_entropy(model(batch["tokens"]), batch["label"])


def lstm(fault: str | None = None) -> dict:
    """Label: whether at least two of the last three tokens are in the upper half of the vocabulary."""
    g = gen(5)
    data = []
    for _ in range(BATCHES):
        tokens = torch.randint(0, VOCAB, (BATCH_SIZE, SEQ_LEN), generator=g)
        label = ((tokens[:, -3:] >= VOCAB // 2).sum(1) >= 2).long()
        data.append({"tokens": tokens, "label": label})
    spec = {"model": LSTMClassifier(), "data": data, "loss": _lstm_loss, "lr": 1e-2}
    if fault == "ids_beyond_vocab":  # an unknown-token id one past the embedding table
        data[0]["tokens"][:3, 4] = VOCAB
    elif fault == "labels_out_of_range":  # -1 for "unlabelled" (the loss ignores -100, not -1)
        data[1]["label"][:2] = -1
    elif fault == "float64":
        _double(spec)
    return common_faults(spec, fault, SGD_LOW_LR_SLOW)


# --- U-Net-like segmentation net ---------------------------------------------------------------


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU())


class TinyUNet(nn.Module):
    def __init__(self, channels: int = 1, classes: int = 2, width: int = 8):
        super().__init__()
        self.enc1 = _block(channels, width)
        self.enc2 = _block(width, 2 * width)
        self.up = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec = _block(2 * width, width)
        self.head = nn.Conv2d(width, classes, 1)

    def forward(self, x):
        skip = self.enc1(x)
        deep = self.enc2(F.max_pool2d(skip, 2))
        return self.head(self.dec(torch.cat([self.up(deep), skip], 1)))


def _seg_loss(model, batch):
    image, mask = batch
    return F.cross_entropy(model(image), mask)


def unet(fault: str | None = None) -> dict:
    """Foreground where the 3x3-smoothed image is positive (2 classes per pixel)."""
    g = gen(6)
    data = []
    for _ in range(BATCHES):
        image = torch.randn(BATCH_SIZE, 1, IMAGE, IMAGE, generator=g)
        mask = (F.avg_pool2d(image, 3, stride=1, padding=1)[:, 0] > 0).long()
        if fault == "unnormalized":  # raw 8-bit intensities
            image = (image * 40 + 110).clamp(0, 255).round()
        data.append((image, mask))
    spec = {"model": TinyUNet(), "data": data, "loss": _seg_loss, "lr": 1e-2}
    if fault == "nan_sample":
        data[0][0][3, 0, 5, 9] = float("nan")
    elif fault == "labels_out_of_range":  # the 255 "void" label of segmentation masks, not ignored
        data[1][1][:2, :4, :4] = 255
    elif fault == "zero_init":  # the first conv zeroed (weight and bias): its ReLU never fires
        zero_(spec["model"].enc1[0])
    elif fault == "float64":
        _double(spec)
    return common_faults(spec, fault, ADAM_LOW_LR_UNET, None)


# --- tabular regression MLP ----------------------------------------------------------------------

FEATURES = ["age", "income", "tenure", "clicks", "score", "ratio"]


class TabularMLP(nn.Module):
    def __init__(self, features: int = len(FEATURES), width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(features, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1)
        )

    def forward(self, x):
        return self.net(x)


def _mse(model, batch):
    x, y = batch
    return F.mse_loss(model(x), y)


def mlp(fault: str | None = None) -> dict:
    """Target: a fixed teacher (a smooth function of the standardized features) plus a little noise."""
    g = gen(7)
    teacher_w = torch.randn(len(FEATURES), 1, generator=g) / len(FEATURES) ** 0.5
    data = []
    for _ in range(BATCHES):
        x = torch.randn(BATCH_SIZE, len(FEATURES), generator=g)
        y = torch.tanh(x @ teacher_w) + 0.5 * x[:, :1] * x[:, 2:3] + 0.05 * torch.randn(BATCH_SIZE, 1, generator=g)
        if fault == "unnormalized":  # income in dollars, as read from the CSV
            x = x.clone()
            x[:, 1] = 52_000 + 18_000 * x[:, 1]
        data.append((x, y))
    spec = {"model": TabularMLP(), "data": data, "loss": _mse, "lr": 1e-2, "feature_names": {0: FEATURES}}
    if fault == "nan_sample":  # one missing age, never imputed
        data[0][0][4, 0] = float("nan")
    elif fault == "zero_init":  # the first layer zeroed (weight and bias): its ReLU never fires
        zero_(spec["model"].net[0])
    elif fault == "float64":
        _double(spec)
    return common_faults(spec, fault)
