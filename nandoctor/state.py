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
    """Every module's parameter and buffer slots, their values, grads, requires_grad and modes.

    Slots, not just tensors: a forward that reassigns a buffer (``self.calls = self.calls + 1``,
    an EMA) puts a new tensor in the module's slot, so restoring means putting the original
    tensor object back in its slot and its saved values back into it. Values are copied in
    place on restore, so restoring allocates nothing; taken once, restorable often.
    Uninitialized (lazy) parameters hold no values and are left as they are.
    """

    def __init__(self, model: Any):
        import torch
        from torch.nn.parameter import is_lazy

        self.slots = [
            (module, kind, dict(getattr(module, kind)))
            for module in model.modules()
            for kind in ("_parameters", "_buffers", "_modules")
        ]
        unique = {
            id(t): t
            for _, kind, slot in self.slots
            if kind != "_modules"
            for t in slot.values()
            if t is not None and not is_lazy(t)
        }
        self.tensors = list(unique.values())
        with torch.no_grad():
            self.saved = [t.detach().clone() for t in self.tensors]
            self.grads = [t.grad if t.is_leaf else None for t in self.tensors]
            self.saved_grads = [None if g is None else g.detach().clone() for g in self.grads]
        self.saved_requires_grad = [t.requires_grad for t in self.tensors]
        self.saved_modes = [(module, module.training) for module in model.modules()]

    def restore(self) -> None:
        import torch

        for module, kind, slot in self.slots:
            current = getattr(module, kind)
            for name in [n for n in current if n not in slot]:  # registered during the run
                del current[name]
            current.update(slot)
        with torch.no_grad():
            for tensor, saved in zip(self.tensors, self.saved):
                if tensor.shape != saved.shape or tensor.dtype != saved.dtype or tensor.device != saved.device:
                    tensor.data = saved.clone()
                else:
                    tensor.copy_(saved)
            for grad, saved in zip(self.grads, self.saved_grads):
                if grad is not None:  # backward accumulates into an existing grad in place
                    grad.copy_(saved)
        for tensor, grad, flag in zip(self.tensors, self.grads, self.saved_requires_grad):
            if tensor.is_leaf:
                tensor.grad = grad
                tensor.requires_grad_(flag)
        for module, mode in self.saved_modes:
            module.training = mode


def run_snapshot(ctx: Any) -> ModelSnapshot:
    """The run's one snapshot of the model, taken on first use: probes that train (the sweep)
    restore from it instead of copying the weights again."""
    return ctx.recording("snapshot", lambda run: ModelSnapshot(run.model))


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
        if (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()) != (
            deterministic,
            deterministic_warn,
        ):
            torch.use_deterministic_algorithms(deterministic, warn_only=deterministic_warn)


@contextmanager
def preserved_everything(model: Any) -> Iterator[None]:
    with preserved_torch_globals(), preserved_rng(), preserved_model(model):
        yield
