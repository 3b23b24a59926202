"""``Guard``: an always-on check for a training loop that writes a capture on the first failure.

Per step it queues on the device, with no host synchronisation, the loss and the global
gradient norm (the learning rates are host floats already). Every ``check_every`` steps the
queue is read back with one ``tolist()`` into a ring buffer of the last ``window`` steps; on
sampled steps it also records each parameter's gradient norm, each leaf module's largest
activation and the size of the next update. At the start of each check window it keeps a
copy of the model, optimizer and GradScaler state and the RNG streams, so when a step of the
window fails (a NaN/Inf loss or gradient, or a loss spike), the capture holds the state before
the window and every batch since: ``nandoctor replay`` re-runs them to the failing step.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch

from nandoctor.distributed import local_part, plain_module
from nandoctor.guard.capture import plain, plain_step, rng_states, save_capture

REASONS = {
    "nonfinite_loss": "the loss is NaN/Inf",
    "nonfinite_grad": "a gradient is NaN/Inf",
    "loss_spike": "the loss spiked",
}
SPIKE_HISTORY = 8  # finite losses the ring needs before a spike can be judged against their median


class GuardTripped(RuntimeError):
    """The guard saw a failing step and wrote its capture (raised when ``on_failure="raise"``)."""

    def __init__(self, reason: str, step: int, path: str | None, detail: str = ""):
        self.reason, self.step, self.path = reason, step, path
        then = f"; capture written to {path}: run `nandoctor replay {path}`" if path else ""
        super().__init__(f"nandoctor guard: {REASONS[reason]} at step {step}{detail}{then}")


@dataclass
class _Pending:
    """One step's records while they are still on the device."""

    step: int
    lrs: list[float]
    batch: Any
    micro: list[Any] = field(default_factory=list)  # the step's further micro-batches (gradient accumulation)
    loss: Any = None
    grad_norm: Any = None
    update_norm: Any = None  # size of the update applied just before this step (sampled steps)
    param_norms: Any = None  # per parameter, sampled steps
    activations: tuple[list[str], Any] | None = None  # leaf module names, their largest |output|


class Guard:
    """Watch a training loop; on the first non-finite loss/gradient or loss spike, write a capture.

    In a plain loop call ``guard.step(loss, batch)`` after ``loss.backward()`` and before
    ``optimizer.step()`` (pass ``grad_norm=`` what ``clip_grad_norm_`` returned to save a pass
    over the gradients). Trainer callbacks use ``begin`` / ``gradients`` / ``end`` instead.
    ``on_failure="raise"`` raises :class:`GuardTripped` after writing the capture; ``"continue"``
    writes it, warns on stderr and lets training go on. Use it as a context manager (or call
    :meth:`close`) so the last steps are checked too.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        scaler: Any = None,
        path: str = "nandoctor_capture.pt",
        window: int = 64,
        check_every: int = 16,
        sample_every: int = 32,
        spike_factor: float = 10.0,
        on_failure: str = "raise",
        spec: str | None = None,
        spec_args: dict | None = None,
    ):
        if on_failure not in ("raise", "continue"):
            raise ValueError(f"on_failure must be 'raise' or 'continue', got {on_failure!r}")
        if min(window, check_every, sample_every) < 1 or spike_factor <= 0:
            raise ValueError("window, check_every and sample_every must be >= 1 and spike_factor > 0")
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.path, self.window, self.check_every = str(path), window, check_every
        self.sample_every, self.spike_factor, self.on_failure = sample_every, spike_factor, on_failure
        self.spec, self.spec_args = spec, dict(spec_args or {})
        self.spec_folder = os.getcwd()  # a relative spec path is relative to it: replay may run elsewhere
        names = {id(p): n for n, p in model.named_parameters()}
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.param_names = [names[id(p)] for p in self.params]
        self.ring: list[dict[str, Any]] = []
        self.steps_seen = 0
        self.tripped: dict[str, Any] | None = None  # the first failure: reason, step, capture path
        self.first_loss: float | None = None  # the yardstick of a spike before the ring holds a median
        self._pending: list[_Pending] = []
        self._current: _Pending | None = None
        self._window_state: dict[str, Any] | None = None
        self._rng = rng_states()
        self._hooks = ExitStack()
        self._activation_max: dict[str, Any] = {}
        self._before_update: list[Any] | None = None

    # -- the loop's calls ------------------------------------------------------------------

    def step(self, loss: Any, batch: Any, grad_norm: Any = None) -> None:
        """One training step: after ``loss.backward()``, before ``optimizer.step()``."""
        self.begin(batch)
        self.gradients(grad_norm)
        self.end(loss)

    def begin(self, batch: Any) -> None:
        """A step starts on ``batch`` (before the optimizer changes anything); a further call before
        its :meth:`end` is another micro-batch of the same step (gradient accumulation), kept too."""
        if self._current is not None:
            self._current.micro.append(batch)
            return
        if not self._pending:
            self._window_state = self._state()
        self._current = _Pending(step=self.steps_seen, lrs=self._lrs(), batch=batch)
        self._pending.append(self._current)

    def gradients(self, grad_norm: Any = None) -> None:
        """The gradients of the current step are ready: after backward (and ``scaler.unscale_``)."""
        record = self._current
        if record is None:
            return
        sampled = record.step % self.sample_every == 0
        record.update_norm = self._update_since_sample()
        if grad_norm is None or sampled:
            per_param = self._grad_norms()
            if per_param is not None:
                record.grad_norm = torch.linalg.vector_norm(per_param)
                record.param_norms = per_param if sampled else None
        if grad_norm is not None:
            record.grad_norm = torch.as_tensor(grad_norm).detach().float()
        if sampled:
            with torch.no_grad():
                self._before_update = [local_part(p.detach()).clone() for p in self.params]
        if self._activation_max:
            names = list(self._activation_max)
            device = self._activation_max[names[0]].device
            record.activations = (names, torch.stack([self._activation_max[n].to(device) for n in names]))
        self._remove_hooks()
        self._activation_max = {}

    def end(self, loss: Any) -> None:
        """The step's loss (a tensor or a float); checks every ``check_every`` steps."""
        record, self._current = self._current, None
        if record is None:
            return
        if isinstance(loss, torch.Tensor):
            record.loss = loss.detach().float().reshape(-1)[:1].sum() if loss.numel() else None
        elif loss is not None:
            record.loss = torch.tensor(float(loss))
        self.steps_seen += 1
        if self.steps_seen % self.sample_every == 0 and self.tripped is None:
            self._install_activation_hooks()
        if len(self._pending) >= self.check_every:
            self.check()

    def check(self, raise_on_failure: bool = True) -> None:
        """Read the queued records back (one synchronisation) and judge them, oldest first."""
        pending, self._pending = self._pending, []
        if pending:
            records = _read_back(pending, self.param_names)
            for index, record in enumerate(records):
                self.ring.append(record)
                reason, detail = self._judge(record)
                if reason is not None:
                    del self.ring[: -self.window]
                    self._trip(reason, detail, record, pending[: index + 1], raise_on_failure)
                    break
            del self.ring[: -self.window]
        self._rng = rng_states()  # the next window starts from here

    def close(self) -> None:
        """Check the steps still queued and remove the sampling hooks."""
        self._remove_hooks()
        self.check()

    def __enter__(self) -> "Guard":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._remove_hooks()
        self.check(raise_on_failure=exc_type is None)  # never hide the loop's own exception

    # -- measurements ----------------------------------------------------------------------

    def _lrs(self) -> list[float]:
        if self.optimizer is None:
            return []
        return [
            float(group["lr"]) if not isinstance(group["lr"], torch.Tensor) else float(group["lr"].detach().cpu())
            for group in self.optimizer.param_groups
        ]

    def _grad_norms(self) -> Any:
        """Each parameter's gradient norm, on the device, as one vector (0 for no gradient)."""
        grads = [None if p.grad is None else local_part(p.grad) for p in self.params]  # FSDP2: this rank's shard
        present = [g.coalesce().values() if g.is_sparse else g for g in grads if g is not None]
        if not present:
            return None
        device = present[0].device
        norms = iter(torch._foreach_norm(present) if hasattr(torch, "_foreach_norm") else [g.norm() for g in present])
        zero = torch.zeros((), device=device)
        return torch.stack([next(norms).float().to(device) if g is not None else zero for g in grads])

    def _update_since_sample(self) -> Any:
        """The norm of what the optimizer changed since the sampled step copied the parameters."""
        saved, self._before_update = self._before_update, None
        if saved is None:
            return None
        with torch.no_grad():
            deltas = [
                torch.linalg.vector_norm((local_part(p.detach()) - s).float()) for p, s in zip(self.params, saved)
            ]
            return torch.linalg.vector_norm(torch.stack([d.to(deltas[0].device) for d in deltas])) if deltas else None

    def _install_activation_hooks(self) -> None:
        """Record each leaf module's largest |output| during the next (sampled) training forward."""
        self._activation_max = {}
        for name, module in self.model.named_modules():
            if next(module.children(), None) is None:
                self._hooks.enter_context(module.register_forward_hook(self._activation_hook(name)))

    def _activation_hook(self, name: str):
        def record(module: Any, args: Any, output: Any) -> None:
            tensor = _first_float(output)
            if tensor is None or not module.training:
                return
            try:
                with torch.no_grad():
                    low, high = torch.aminmax(tensor.detach())
                    value = torch.maximum(low.abs(), high.abs()).float()
                previous = self._activation_max.get(name)
                self._activation_max[name] = (
                    value if previous is None else torch.maximum(previous, value.to(previous.device))
                )
            except Exception:  # never break the user's training over a statistic
                pass

        return record

    def _remove_hooks(self) -> None:
        self._hooks.close()
        self._hooks = ExitStack()

    # -- judging and capturing -------------------------------------------------------------

    def _judge(self, record: dict[str, Any]) -> tuple[str | None, str]:
        loss, norm = record["loss"], record["grad_norm"]
        if loss is not None and not math.isfinite(loss):
            return "nonfinite_loss", f" (loss {loss})"
        if norm is not None and not math.isfinite(norm) and self.scaler is None:
            return "nonfinite_grad", f" (gradient norm {norm})"
        history = [
            r["loss"] for r in self.ring[-self.window - 1 : -1] if r["loss"] is not None and math.isfinite(r["loss"])
        ]
        if loss is not None and len(history) >= SPIKE_HISTORY:
            median = statistics.median(history)
            if loss > median + self.spike_factor * max(abs(median), 1e-12):
                return "loss_spike", f" (loss {loss:.4g}, {len(history)}-step median {median:.4g})"
        elif loss is not None and self.first_loss is not None:  # too few steps for a median: the first loss
            if loss > self.first_loss + self.spike_factor * max(abs(self.first_loss), 1e-12):
                return "loss_spike", f" (loss {loss:.4g}, first loss {self.first_loss:.4g})"
        if loss is not None and self.first_loss is None and math.isfinite(loss):
            self.first_loss = loss
        return None, ""

    def _trip(
        self, reason: str, detail: str, record: dict[str, Any], steps: list[_Pending], raise_on_failure: bool
    ) -> None:
        if self.tripped is not None:
            return  # one capture per run: the first failure is the one to diagnose
        path = None
        try:
            path = str(self._write_capture(reason, record, steps))
        except Exception as exc:  # a full disk must not hide the failure itself
            print(f"nandoctor guard: could not write the capture: {exc}", file=sys.stderr)
        self.tripped = {"reason": reason, "step": record["step"], "path": path}
        error = GuardTripped(reason, record["step"], path, detail)
        if self.on_failure == "raise" and raise_on_failure:
            self._remove_hooks()
            raise error
        print(f"{error} (training goes on: on_failure={self.on_failure!r})", file=sys.stderr)

    def _state(self) -> dict[str, Any]:
        """Model, optimizer and scaler state at the window start (copies on their device)."""
        with torch.no_grad():
            model = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return {
            "step": self.steps_seen,
            "model": model,
            "rng": self._rng,
            "optimizer": _clone(self.optimizer.state_dict()) if self.optimizer is not None else None,
            "scaler": _clone(self.scaler.state_dict()) if self.scaler is not None else None,
        }

    def _write_capture(self, reason: str, record: dict[str, Any], steps: list[_Pending]):
        state = self._window_state or {}
        optimizer = self.optimizer
        payload = {
            "reason": reason,
            "step": record["step"],
            "window_start": state.get("step"),
            "model": plain(state.get("model")),
            "optimizer": plain(state.get("optimizer")),
            "scaler": plain(state.get("scaler")),
            "rng": state.get("rng"),
            "batches": [plain_step(s.batch, s.micro) for s in steps],
            "lrs": [s.lrs for s in steps],
            "ring": self.ring,
            "spec": self.spec,
            "spec_args": plain(self.spec_args),
            "spec_folder": self.spec_folder,
            "model_class": _class_name(plain_module(self.model)[0]),
            "optimizer_class": None
            if optimizer is None
            else f"{type(optimizer).__module__}.{type(optimizer).__qualname__}",
            "torch_version": str(torch.__version__),
        }
        return save_capture(self.path, payload)


def _class_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _first_float(output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return output if output.is_floating_point() and output.numel() else None
    if isinstance(output, (list, tuple)):
        return next((t for t in map(_first_float, output) if t is not None), None)
    if isinstance(output, dict):
        return next((t for t in map(_first_float, output.values()) if t is not None), None)
    return None


def _clone(tree: Any) -> Any:
    """A deep copy whose tensors are clones on their device (an optimizer's state_dict)."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().clone()
    if isinstance(tree, dict):
        return {k: _clone(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_clone(v) for v in tree)
    return tree


def _read_back(pending: list[_Pending], param_names: list[str]) -> list[dict[str, Any]]:
    """Every queued device value in one ``tolist()``; returns the host records, oldest first."""
    nan = float("nan")
    device = next(
        (t.device for p in pending for t in (p.loss, p.grad_norm) if isinstance(t, torch.Tensor)), torch.device("cpu")
    )
    parts, shapes = [], []
    for p in pending:
        scalars = [p.loss, p.grad_norm, p.update_norm]
        parts.append(
            torch.stack([(t.float().reshape(()) if t is not None else torch.tensor(nan)).to(device) for t in scalars])
        )
        extra = [t for t in (p.param_norms, p.activations[1] if p.activations else None) if t is not None]
        parts += [t.float().reshape(-1).to(device) for t in extra]
        shapes.append((p.param_norms is not None, p.activations[0] if p.activations else None))
    values = iter(torch.cat(parts).tolist())
    records = []
    for p, (has_params, activation_names) in zip(pending, shapes):
        loss, norm, update = next(values), next(values), next(values)
        record = {
            "step": p.step,
            "lrs": p.lrs,
            "loss": loss if p.loss is not None else None,
            "grad_norm": norm if p.grad_norm is not None else None,
            "update_norm": update if p.update_norm is not None else None,
        }
        if has_params:
            record["param_grad_norms"] = {name: next(values) for name in param_names}
        if activation_names:
            record["activation_max"] = {name: next(values) for name in activation_names}
        records.append(record)
    return records
