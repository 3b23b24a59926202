"""A healthy setup: nandoctor's verdict is ``healthy``."""

from nandoctor.examples.common import Classifier, cross_entropy_loss, make_batches


def build(lr: float = 1e-3):
    return {
        "model": Classifier(),
        "data": make_batches(),
        "loss": cross_entropy_loss,
        "lr": lr,
        "feature_names": {"features": ["time", "charge", "x", "y"]},
    }
