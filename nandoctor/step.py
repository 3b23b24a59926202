"""One training step, as the user trains, for every loop that trains: the sweep, the steps probe, replay.

Three loops with their own steps drift: one skips a GradScaler step the others count as a
NaN, one calls a raising step "stopped" and another an internal error. So precision, the
GradScaler, clipping, closure optimizers, gradient accumulation, the read-back of losses and
norms, the skipped-step policy and the raising-step policy live here once. It takes a
:class:`~nandoctor.spec.Setup` and plain values (never the run context or the settings), so
replay, which has no run context, trains with it too.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from nandoctor.batches import iter_tensors
from nandoctor.errors import InternalError, UsageError, describe
from nandoctor.loss import compute_loss
from nandoctor.measure.hooks import ours


@dataclass(frozen=True)
class StepFailure:
    """The user's step raised: the run ends here. Every loop reports it by ``text``."""

    step: int
    error: str  # errors.describe of what it raised: "IndexError: index out of range in self"

    @property
    def text(self) -> str:
        return f"step {self.step} raised {self.error}"


class StepRaised(UsageError):
    """A run that cannot go on because the user's step raised (the user's code, never ours: exit 2)."""

    def __init__(self, failure: StepFailure, message: str):
        super().__init__(message)
        self.failure = failure


def autocast(setup: Any):
    """The user's precision: autocast for ``amp`` "fp16"/"bf16", nothing for float32."""
    import torch

    if setup.amp is None:
        return nullcontext()
    dtype = torch.float16 if setup.amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type=setup.device.type, dtype=dtype)


def make_optimizer(setup: Any, lr: float):
    """The user's optimizer factory (AdamW by default) over the trainable parameters, at ``lr``."""
    import torch

    params = [p for p in setup.model.parameters() if p.requires_grad]
    factory = setup.optimizer or (lambda ps, rate: torch.optim.AdamW(ps, lr=rate))
    return factory(params, lr)


@contextmanager
def fresh_optimizer(setup: Any, lr: float) -> Iterator[Any]:
    """The user's optimizer for one run, its state dropped on exit. An optimizer sits in a reference
    cycle: without this, its state (two copies of the weights for Adam) would live beside the next
    run's until the garbage collector came round."""
    optimizer = make_optimizer(setup, lr)
    try:
        yield optimizer
    finally:
        optimizer.state.clear()


def fp16_scaler(setup: Any, state: dict[str, Any] | None = None):
    """GradScaler for fp16 on CUDA, as the user trains (None otherwise), optionally from a saved state."""
    import torch

    if setup.amp != "fp16" or setup.device.type != "cuda":
        return None
    scaler = torch.amp.GradScaler("cuda")
    if state:
        scaler.load_state_dict(state)
    return scaler


def needs_closure(optimizer: Any) -> bool:
    """An optimizer whose ``step`` must be given a closure (L-BFGS re-evaluates the loss itself)."""
    try:
        closure = inspect.signature(optimizer.step).parameters.get("closure")
    except (TypeError, ValueError):
        return False
    return closure is not None and closure.default is inspect.Parameter.empty


def read_interval(device: Any, gpu_every: int) -> int:
    """Steps per read-back: each read waits for the device, so on a GPU several steps are read at once
    (a diverging run is then cut up to that many steps late, its state thrown away all the same)."""
    return 1 if device.type == "cpu" else max(1, gpu_every)


def calibrating(loss: float, norm: float) -> bool:
    """A step GradScaler skips while its scale comes down: a finite loss, gradients that overflowed."""
    return math.isfinite(loss) and not math.isfinite(norm)


@dataclass(kw_only=True)
class StepLog:
    """What a run's steps read back: the loss and gradient norm before clipping of each step."""

    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    skipped_steps: int = 0  # fp16 GradScaler steps skipped while the scale calibrates
    nonfinite_step: int | None = None
    failure: StepFailure | None = None  # the step that raised, when one did
    stopped: str | None = None  # why it stopped short other than a NaN/Inf: "time budget", the failure's text

    def add(self, loss: float, norm: float, scaled: bool, skip_limit: int) -> bool:
        """Record one step; True when it ends the run as non-finite. Under GradScaler a finite loss with
        non-finite gradients is a skipped step, unless it is past ``skip_limit`` skipped in a row."""
        step = len(self.losses)
        self.losses.append(loss)
        self.grad_norms.append(norm)
        if scaled and calibrating(loss, norm):
            self.skipped_steps += 1
            window = skip_limit + 1  # the skip streak read from the record itself, no counter threaded through
            recent = list(zip(self.losses[-window:], self.grad_norms[-window:]))
            if len(recent) < window or not all(calibrating(*pair) for pair in recent):
                return False
        if not (math.isfinite(loss) and math.isfinite(norm)):
            self.nonfinite_step = step
            return True
        return False

    def add_all(self, values: list[list[float]], scaled: bool, skip_limit: int) -> bool:
        """Record a read-back up to the step that ends the run; True when one does."""
        return any(self.add(loss, norm, scaled, skip_limit) for loss, norm in values)


class TrainingStep:
    """The user's optimizer step over one or more micro-batches; losses and norms stay on the device.

    ``run`` trains one step, ``measure`` only its forward and backward (replay's failing step);
    ``read`` brings the queued values back in one ``.tolist()``. A closure optimizer runs unscaled:
    GradScaler.step takes no closure.
    """

    def __init__(self, setup: Any, optimizer: Any, clip: float | None, *, scaler: Any = None, read_every: int = 1):
        self.setup, self.optimizer, self.clip, self.read_every = setup, optimizer, clip, read_every
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.closure = needs_closure(optimizer)
        self.scaler = None if self.closure else scaler
        self.pending: list[Any] = []

    @property
    def scaled(self) -> bool:
        return self.scaler is not None

    def run(self, step: int, batches: Sequence[Any]) -> StepFailure | None:
        """One step on ``batches`` (micro-batches accumulated); the failure when the user's code raised."""
        return self._guarded(step, self._closure_step if self.closure else self._update_step, batches)

    def measure(self, step: int, batches: Sequence[Any]) -> StepFailure | None:
        """Forward and backward only: the loss and norm of a step whose update is not wanted."""

        def backward_only(chunk: Sequence[Any]) -> Any:
            self.optimizer.zero_grad(set_to_none=True)
            return self._backward(chunk)[0]

        return self._guarded(step, backward_only, batches)

    def due(self, done: int, checkpoints: Sequence[int] = ()) -> bool:
        """Time for a read-back after ``done`` steps: ``read_every`` queued, or a checkpoint."""
        return len(self.pending) >= self.read_every or done in checkpoints

    def read(self) -> list[list[float]]:
        """[loss, gradient norm before clipping] of each step since the last read: one sync."""
        import torch

        values, self.pending = (torch.stack(self.pending).tolist() if self.pending else []), []
        return values

    def _guarded(self, step: int, body: Callable[[Sequence[Any]], Any], batches: Sequence[Any]) -> StepFailure | None:
        try:
            self.pending.append(body(batches))
        except (UsageError, InternalError):  # ours (KeyboardInterrupt is no Exception: it passes too)
            raise
        except Exception as exc:  # the user's step raised: the run ends, recorded
            return StepFailure(step, describe(exc))
        return None

    def _update_step(self, batches: Sequence[Any]) -> Any:
        self.optimizer.zero_grad(set_to_none=True)
        values, _ = self._backward(batches)
        if self.scaler:  # it skips a step whose gradients are not finite, and lowers the scale
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return values

    def _closure_step(self, batches: Sequence[Any]) -> Any:
        import torch

        first: list[Any] = []  # the loss and norm at the weights the step starts from

        def closure() -> Any:
            self.optimizer.zero_grad(set_to_none=True)
            with torch.enable_grad():
                values, loss = self._backward(batches)
            first.append(values)
            return loss

        self.optimizer.step(closure)
        return first[0]

    def _backward(self, batches: Sequence[Any]) -> tuple[Any, Any]:
        """Forward and backward of every micro-batch (each weighted 1/n: the gradient of their mean),
        the unscaled gradient norm before clipping, and clipping; ([loss, norm] tensor, mean loss)."""
        import torch

        parts = []
        for batch in batches:
            with autocast(self.setup):
                loss = compute_loss(self.setup, self.setup.model, batch).total
            share = loss / len(batches) if len(batches) > 1 else loss
            (self.scaler.scale(share) if self.scaler else share).backward()
            parts.append(loss.detach().float())
        loss = parts[0] if len(parts) == 1 else torch.stack(parts).mean()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip if self.clip else math.inf)
        return torch.stack([loss, norm.float().to(loss.device)]), loss


def run_steps(
    trainer: TrainingStep,
    log: StepLog,
    steps: int,
    batch_at: Callable[[int], Any],
    record: Callable[[list[list[float]]], bool],
    *,
    accumulate: int = 1,
    checkpoints: Sequence[int] = (),
    at_checkpoint: Callable[[int], None] | None = None,
    budget_s: float = math.inf,
) -> None:
    """Up to ``steps`` steps into ``log``, each on ``accumulate`` micro-batches (``batch_at(i)``, i counting
    micro-batches). ``record`` takes each read-back into the log and says when the run ends (non-finite,
    blown up); a raising step ends it too, after the steps before it are recorded."""
    began = time.monotonic()
    for step in range(steps):
        if time.monotonic() - began > budget_s:
            if not record(trainer.read()):
                log.stopped = "time budget"
            return
        failure = trainer.run(step, [batch_at(step * accumulate + i) for i in range(accumulate)])
        if failure is None and not trainer.due(step + 1, checkpoints) and step + 1 < steps:
            continue
        if record(trainer.read()):
            return
        if failure is not None:
            log.failure, log.stopped = failure, failure.text
            return
        if step + 1 in checkpoints and at_checkpoint is not None:
            at_checkpoint(step + 1)


def score(setup: Any, batches: list[Any]) -> tuple[float | None, float | None]:
    """Mean loss on ``batches`` (buffers restored), and the spread of the outputs across samples.

    Under ``torch.no_grad`` (no activation kept for a backward), unless the loss raises there: one
    that takes gradients itself (a WGAN-GP penalty calls ``torch.autograd.grad``) runs as in
    training, each loss detached and its graph dropped.
    The spread is the mean over output features of their standard deviation across the batch,
    over the outputs' RMS: ~0 when the model predicts the same thing for every input.
    """
    import torch

    if not batches:
        return None, None
    model = setup.model
    spreads: list[Any] = []
    losses: list[Any] = []

    @ours
    def record(module: Any, args: Any, output: Any) -> None:
        if len(spreads) < len(losses) + 1:
            for _, tensor in iter_tensors(output):
                if tensor.is_floating_point() and tensor.dim() >= 1 and tensor.shape[0] > 1:
                    flat = tensor.detach().float().reshape(tensor.shape[0], -1)
                    scale = flat.pow(2).mean().sqrt() + 1e-12
                    spreads.append(flat.std(dim=0).mean() / scale)
                    return

    # the modes the model trains in (batch statistics, as during training: running statistics lag far
    # behind in a short run), with every buffer put back so that scoring never changes the run;
    # dropout off: its noise on one small batch would swamp the differences between rates
    buffers = [b for b in model.buffers() if b is not None]
    saved = [b.detach().clone() for b in buffers]
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.training]
    try:
        for module in dropouts:
            module.training = False

        def forward_all(grad_mode: Any) -> None:
            losses.clear()
            spreads.clear()
            with torch.no_grad():
                for buffer, value in zip(buffers, saved):
                    buffer.copy_(value)
            with grad_mode, autocast(setup), model.register_forward_hook(record):
                for batch in batches:
                    losses.append(compute_loss(setup, model, batch).total.detach().float().reshape(()))

        try:  # without a graph: no activation is kept for a backward that never comes
            forward_all(torch.no_grad())
        except Exception:  # a loss that takes gradients itself (a gradient penalty): scored as it trains
            forward_all(torch.enable_grad())
    finally:
        for module in dropouts:
            module.training = True
        with torch.no_grad():
            for buffer, value in zip(buffers, saved):
                buffer.copy_(value)
    values = torch.stack(losses + spreads).tolist()  # one read-back
    loss = sum(values[: len(losses)]) / len(losses)
    spread = sum(values[len(losses) :]) / len(spreads) if spreads else None
    return loss, spread
