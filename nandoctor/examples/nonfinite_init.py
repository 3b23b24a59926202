"""Feature normalization statistics computed from an empty calibration set: mean and std are NaN."""

import torch
from torch import nn

from nandoctor.examples.common import FEATURES, Classifier, cross_entropy_loss, make_batches


class FeatureNormalizer(nn.Module):
    def __init__(self, calibration: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", calibration.mean(0))  # NaN when calibration is empty
        self.register_buffer("std", calibration.std(0) if len(calibration) > 1 else calibration.mean(0))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.std


class NormalizedClassifier(Classifier):
    def __init__(self, calibration: torch.Tensor):
        super().__init__()
        self.normalizer = FeatureNormalizer(calibration)

    def forward(self, batch):
        batch = dict(batch, features=self.normalizer(batch["features"]))
        return super().forward(batch)


def build(calibration_rows: int = 0):
    calibration = torch.randn(calibration_rows, FEATURES)  # the bug: the calibration split is empty
    return {"model": NormalizedClassifier(calibration), "data": make_batches(), "loss": cross_entropy_loss}
