"""Ids up to 1,199 fed to an embedding of 1,000 rows: an IndexError (a device assert on CUDA)."""

from nandoctor.examples.common import Classifier, cross_entropy_loss, make_batches


def build(vocab: int = 1000):
    return {"model": Classifier(vocab=vocab), "data": make_batches(max_id=1199), "loss": cross_entropy_loss}
