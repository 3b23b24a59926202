"""Snapshots that put everything back: the model's state, RNG streams and torch's global flags.

nandoctor must never damage what it diagnoses, so every probe runs inside these context
managers and the restore happens in ``finally`` (as torch's anomaly_mode does), not in a
``reset()`` the caller has to remember.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any, Iterator


class ModelSnapshot:
    """Weights, buffers, grads, requires_grad and every module's mode, taken once, restorable often."""

    def __init__(self, model: Any):
        import torch

        self.params = list(model.parameters())
        self.buffers = [b for b in model.buffers() if b is not None]
        with torch.no_grad():
            self.saved_params = [p.detach().clone() for p in self.params]
            self.saved_buffers = [b.detach().clone() for b in self.buffers]
            self.saved_grads = [None if p.grad is None else p.grad.detach().clone() for p in self.params]
        self.saved_requires_grad = [p.requires_grad for p in self.params]
        self.saved_modes = [(module, module.training) for module in model.modules()]

    def restore(self) -> None:
        import torch

        with torch.no_grad():
            for tensor, saved in zip(self.params + self.buffers, self.saved_params + self.saved_buffers):
                if tensor.shape != saved.shape or tensor.dtype != saved.dtype:
                    tensor.data = saved.clone()
                else:
                    tensor.copy_(saved)
            for param, grad, flag in zip(self.params, self.saved_grads, self.saved_requires_grad):
                param.grad = None if grad is None else grad.clone()
                param.requires_grad_(flag)
        for module, mode in self.saved_modes:
            module.training = mode


@contextmanager
def preserved_model(model: Any) -> Iterator[None]:
    """Restore weights, buffers, grads, requires_grad and every module's train/eval mode."""
    snapshot = ModelSnapshot(model)
    try:
        yield
    finally:
        snapshot.restore()


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore torch (CPU and CUDA), Python and NumPy random streams."""
    import torch

    torch_state = torch.random.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    python_state = random.getstate()
    try:
        import numpy
    except ImportError:  # numpy is optional for torch
        numpy = None
    numpy_state = numpy.random.get_state() if numpy is not None else None
    try:
        yield
    finally:
        torch.random.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        random.setstate(python_state)
        if numpy is not None:
            numpy.random.set_state(numpy_state)


@contextmanager
def preserved_torch_globals() -> Iterator[None]:
    """Restore grad mode, anomaly detection, default dtype and deterministic-algorithm flags."""
    import torch

    grad_enabled = torch.is_grad_enabled()
    anomaly = torch.is_anomaly_enabled()
    anomaly_check_nan = torch.is_anomaly_check_nan_enabled()
    default_dtype = torch.get_default_dtype()
    deterministic = torch.are_deterministic_algorithms_enabled()
    deterministic_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        yield
    finally:
        torch.set_grad_enabled(grad_enabled)
        if (torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()) != (anomaly, anomaly_check_nan):
            torch.set_anomaly_enabled(anomaly, anomaly_check_nan)
        if torch.get_default_dtype() != default_dtype:
            torch.set_default_dtype(default_dtype)
        # only when changed: the setter imports torch._inductor, two seconds on a CPU
        if (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled()) != (deterministic, deterministic_warn):
            torch.use_deterministic_algorithms(deterministic, warn_only=deterministic_warn)


@contextmanager
def preserved_everything(model: Any) -> Iterator[None]:
    with preserved_torch_globals(), preserved_rng(), preserved_model(model):
        yield
