"""Shared pieces of the zoo builders: seeded generators, optimizers, the Hugging Face loss."""

from __future__ import annotations

import torch

BATCHES = 8  # batches per data set (nandoctor reads the first few)
BATCH_SIZE = 16
SEQ_LEN = 16
VOCAB = 32
IMAGE = 16  # images are IMAGE x IMAGE

HIGH_LR = 1.0  # AdamW at 1.0: every step moves each weight by about 1
SGD_LOW_LR = 1e-4  # SGD (momentum 0.9) at 1e-4: the loss barely moves in a short run
SGD_LOW_LR_SLOW = 1e-3  # the same fault for the LSTM, whose SGD needs a rate near 1
ADAM_LOW_LR = 1e-6  # AdamW at 1e-6 (BERT learns at 1e-3)
ADAM_LOW_LR_UNET = 1e-5  # AdamW at 1e-5 (the U-Net learns at 1e-2)
TINY_CLIP = 1e-4  # clip_grad_norm_(max_norm=1e-4): every step shrunk by orders of magnitude
HEAD_SCALE = 1e6  # head init scaled up: logits far beyond float16's 65,504 (float32 is fine)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sgd(params, lr):
    """SGD with momentum: at 1e-4 the loss barely moves; 100x-1000x higher trains (the sweep reaches 1e-1)."""
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


def hf_loss(model, batch):
    """Hugging Face's default-loss convention made explicit: ``model(**batch)`` with ``labels`` in the
    batch computes the model's own cross-entropy; its ``ModelOutput.loss`` is the training loss."""
    return model(**batch).loss


def hf_output(model, batch):
    """The same, returning the whole ``ModelOutput`` (CONTRACT §1: a result with a ``loss`` attribute
    or key is taken as that scalar loss; its other entries, e.g. ``logits``, are not components)."""
    return model(**batch)


def common_faults(spec: dict, fault: str | None, low_lr: float = SGD_LOW_LR, low_optimizer=sgd) -> dict:
    """The faults that are only training settings, the same for every architecture.

    ``low_lr``: the SGD rate of the ``lr_too_low`` fault, 1000x below one that trains this
    architecture well in 20 steps (so the diagnose sweep, which reaches 1000x up, finds it).
    ``low_optimizer`` None keeps the default AdamW: for nets that SGD does not train in 20 steps at
    any rate (BERT, the U-Net), the fault is AdamW at a rate far too low instead.
    """
    if fault == "lr_too_high":
        spec["lr"] = HIGH_LR
    elif fault == "lr_too_low":
        spec["lr"] = low_lr
        if low_optimizer is not None:
            spec["optimizer"] = low_optimizer
    elif fault == "grad_clip_tiny":
        spec["grad_clip"] = TINY_CLIP
    return spec


def scale_weight_(module: torch.nn.Module, factor: float) -> None:
    with torch.no_grad():
        module.weight.mul_(factor)


def zero_(module: torch.nn.Module) -> None:
    """Zero a layer's weight (and bias): an init bug, e.g. a checkpoint key that failed to load into zeros."""
    with torch.no_grad():
        module.weight.zero_()
        if getattr(module, "bias", None) is not None:
            module.bias.zero_()
