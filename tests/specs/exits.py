"""Build functions whose user code calls sys.exit: in the build, in the loss, in the data loader."""

import sys

import torch
from torch import nn


def _classifier():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(4)]
    return model, data


def build_exits():
    sys.exit(0)


def build_loss_exits():
    model, data = _classifier()

    def loss(model, batch):
        if batch[0].requires_grad or True:
            sys.exit(3)

    return {"model": model, "data": data, "loss": loss}


def build_loader_exits():
    model, _ = _classifier()

    def batches():
        yield torch.randn(8, 4)
        sys.exit(0)

    return {"model": model, "data": batches()}


def build_fine():
    model, data = _classifier()
    return {
        "model": model,
        "data": data,
        "loss": lambda model, batch: nn.functional.cross_entropy(model(batch[0]), batch[1]),
    }


class _RaisesOnceTrained(nn.Module):
    """Raises as soon as its weights have moved from their start: at the second training step."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.register_buffer("start", self.fc.weight.detach().clone())

    def forward(self, x):
        if not torch.equal(self.start, self.fc.weight.detach()):
            raise ValueError("the weights moved")
        return self.fc(x)


def build_step_raises():
    _, data = _classifier()
    return {
        "model": _RaisesOnceTrained(),
        "data": data,
        "loss": lambda model, batch: nn.functional.cross_entropy(model(batch[0]), batch[1]),
    }
