"""Raw detector pulses (time 5,714-77,785 ns, sensor ids 0-5,159 as floats) fed to a transformer."""

import torch
from torch import nn
from torch.nn import functional as F


class PulseTransformer(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        self.embed = nn.Linear(4, width)
        layer = nn.TransformerEncoderLayer(width, 4, 2 * width, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2)
        self.direction = nn.Linear(width, 3)

    def forward(self, batch):
        return self.direction(self.encoder(self.embed(batch["pulses"])).mean(1))


def make_batches(count: int = 4, events: int = 8, pulses: int = 24) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        time = 5714 + (77785 - 5714) * torch.rand(events, pulses, 1, generator=g)
        charge = torch.exp(1.2 * torch.randn(events, pulses, 1, generator=g)).clamp(0.025, 2762)
        sensor_id = torch.randint(0, 5160, (events, pulses, 1), generator=g).float()
        auxiliary = (torch.rand(events, pulses, 1, generator=g) > 0.7).float()
        batches.append(
            {
                "pulses": torch.cat([time, charge, sensor_id, auxiliary], -1),
                "direction": F.normalize(torch.randn(events, 3, generator=g), dim=-1),
            }
        )
    return batches


def angular_loss(model, batch):
    cosine = F.cosine_similarity(model(batch), batch["direction"], dim=-1)
    return torch.acos(cosine.clamp(-1 + 1e-6, 1 - 1e-6)).mean()


def build(lr: float = 3e-4):
    return {
        "model": PulseTransformer(),
        "data": make_batches(),
        "loss": angular_loss,
        "lr": lr,
        "feature_names": {"pulses": ["time", "charge", "sensor_id", "auxiliary"]},
    }
