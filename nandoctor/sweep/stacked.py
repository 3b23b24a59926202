"""Several rates of the sweep trained in one pass: K copies of the weights stacked, one kernel per op.

Rates trained one after another pay the per-op overhead (Python, kernel launches, the optimizer's
loop over parameters) once per rate; small models and GPUs spend most of a step there. Here the
trainable parameters get a leading dimension of K (one slice per rate), the user's loss runs once
under ``torch.func.vmap`` over ``functional_call``, and the optimizer's update is applied to the
stacked tensors with each slice's own rate. The model's own parameters are never written.

The result must be what the sequential sweep gives: the same :class:`TrainRun` records (losses,
gradient norms before clipping, clipping per copy, held-out scores at the checkpoints, verdicts).
Every rate starts from the same seed, so the sequential runs see the same dropout masks; vmap's
``randomness="same"`` draws those very masks once for every slice. The update is reproduced only
where its math is known exactly (torch's Adam, AdamW, SGD, any group layout); anything else (another
optimizer class, a closure optimizer, GradScaler, user hooks, a forward vmap refuses) falls back to
the sequential runs, and the reason is kept for the raw report.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

from nandoctor.findings import Setting
from nandoctor.state import preserved_rng
from nandoctor.step import fp16_scaler, make_optimizer, needs_closure, read_interval
from nandoctor.sweep.training import TrainRun, _stopped, classify, train

SETTINGS = (
    Setting(
        "sweep_stacked",
        "auto",
        "LR sweep: train several rates in one pass (stacked copies of the weights under torch.func.vmap): "
        "on, off, or auto (on a GPU, and on a CPU for models small enough that overhead dominates)",
    ),
    Setting(
        "sweep_memory",
        8,
        "... extra copies of the weights, gradients, optimizer state and one step's activations the "
        "stacked sweep may hold beside the model's own (K rates in a pass take K-1); 0 trains one rate at a time",
        minimum=0,
    ),
    Setting(
        "sweep_stacked_cpu_gflop",
        1.0,
        "... with sweep_stacked=auto on a CPU: stack only when a training step counts at most this many GFLOP "
        "(past it the CPU is busy with the arithmetic itself and stacking gains nothing)",
    ),
)

EXACT = ("Adam", "AdamW", "SGD")  # torch optimizer classes whose update is reproduced here
_ADAM_KEYS = ("betas", "eps", "amsgrad", "maximize", "decoupled_weight_decay")
_SGD_KEYS = ("momentum", "dampening", "nesterov", "maximize")


class Unstackable(Exception):
    """Why these rates cannot train stacked: the sweep trains them one at a time."""


def optimizer_rule(setup: Any, rates: list[float]) -> tuple[str, list[list[dict[str, Any]]], dict[int, int]]:
    """The optimizer each rate trains with, read from the user's factory: its class name, each rate's
    param-group hyperparameters, and each parameter's group. Unstackable when the update is not one
    reproduced exactly."""
    import torch

    groups_per_rate, owner = [], {}
    kind = None
    for rate in rates:
        optimizer = make_optimizer(setup, rate)
        try:
            name = type(optimizer).__name__
            if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD):
                raise Unstackable(f"the optimizer {name} is not one the stacked update reproduces ({', '.join(EXACT)})")
            if needs_closure(optimizer):
                raise Unstackable(f"the optimizer {name} takes a closure")
            groups = []
            for index, group in enumerate(optimizer.param_groups):
                if isinstance(group["lr"], torch.Tensor) or isinstance(group.get("weight_decay"), torch.Tensor):
                    raise Unstackable("the optimizer's rate or weight decay is a tensor")
                keys = _ADAM_KEYS if name != "SGD" else _SGD_KEYS
                groups.append({"lr": float(group["lr"]), "weight_decay": float(group["weight_decay"])})
                groups[-1].update({k: group.get(k) for k in keys})
                for p in group["params"]:
                    owner[id(p)] = index
            kind = kind or name
        finally:
            optimizer.state.clear()
        groups_per_rate.append(groups)
    first = groups_per_rate[0]
    for groups in groups_per_rate[1:]:
        same = len(groups) == len(first) and all(
            {k: v for k, v in a.items() if k not in ("lr", "weight_decay")}
            == {k: v for k, v in b.items() if k not in ("lr", "weight_decay")}
            for a, b in zip(groups, first)
        )
        if not same:
            raise Unstackable("the optimizer's settings other than its rate change with the rate")
    return kind or "AdamW", groups_per_rate, owner


def refusal(ctx: Any) -> str | None:
    """Why this setup cannot train stacked at all (None when it may): checked before any work."""
    import torch

    setup = ctx.setup
    if fp16_scaler(setup) is not None:
        return "fp16 with GradScaler (the scaler's skipped steps are per run)"
    hooked = [
        name
        for name, module in setup.model.named_modules()
        if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
    ]
    module_globals = torch.nn.modules.module
    hooked += [
        "<global>"
        for name in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks")
        if getattr(module_globals, name, None)
    ][:1]
    if hooked:
        return f"hooks on {hooked[0] or '<root>'} (a hook could keep a stacked tensor)"
    return None


def copies_that_fit(ctx: Any, settings: Any, state_slots: int) -> tuple[int, str]:
    """K, the rates trained in one pass: one copy plus at most ``sweep_memory`` more, each copy being
    the weights, their gradients, the optimizer's state and one step's activations; never past half
    of the device's memory."""
    import os

    import torch

    setup = ctx.setup
    params = [p for p in setup.model.parameters() if p.requires_grad]
    weights = sum(p.numel() * p.element_size() for p in params)
    activations = _activation_bytes(ctx)
    per_copy = weights * (2 + state_slots) + activations
    if setup.device.type == "cuda":
        total = torch.cuda.get_device_properties(setup.device).total_memory
    else:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    fit = max(1, int((total // 2) // max(per_copy, 1)))
    k = max(1, min(1 + int(settings.sweep_memory), fit))
    why = (
        f"{k} rates a pass: one copy plus {k - 1} of {per_copy / 2**20:.3g} MiB each (weights, gradients, "
        f"{state_slots} optimizer state slot(s), activations); sweep_memory allows {settings.sweep_memory}, "
        f"half the device's memory allows {fit}"
    )
    return k, why


def _activation_bytes(ctx: Any) -> int:
    """Bytes of every tensor a forward of the first batch produces (an upper bound on what backward keeps)."""
    import torch
    from torch.overrides import TorchFunctionMode

    from nandoctor.state import preserved_model
    from nandoctor.step import autocast

    total = [0]

    class Counter(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor):
                total[0] += out.numel() * out.element_size()
            return out

    try:
        with preserved_model(ctx.model), torch.no_grad(), Counter(), autocast(ctx.setup):
            ctx.loss(ctx.batches[0])
    except Exception:  # counted as nothing: the weights decide
        return 0
    return total[0]


def wanted(ctx: Any, settings: Any) -> tuple[bool, str]:
    """Whether the sweep_stacked setting asks for stacking here, and why."""
    mode = str(settings.sweep_stacked).lower()
    if mode in ("off", "false", "0", "no"):
        return False, "sweep_stacked is off"
    if mode in ("on", "true", "1", "yes") or ctx.setup.device.type == "cuda":
        return True, f"sweep_stacked is {mode}"
    plan = ctx.shared.get("sweep_plan")
    gflop = getattr(plan, "step_gflop", None)
    if plan is None:  # lr-sweep --steps: no plan was made; count the step here
        from nandoctor.state import run_snapshot
        from nandoctor.sweep.plan import step_gflop

        snapshot = run_snapshot(ctx)
        gflop = step_gflop(ctx)
        snapshot.restore()
    if gflop is not None and gflop > settings.sweep_stacked_cpu_gflop:
        return False, (
            f"on a CPU a {gflop:.3g}-GFLOP step is arithmetic-bound (sweep_stacked_cpu_gflop "
            f"{settings.sweep_stacked_cpu_gflop:g}): stacking gains nothing"
        )
    return True, "sweep_stacked is auto"


class RateRunner:
    """Trains the sweep's rates from the snapshot: those queued together in stacked passes of K, the
    others (or all of them, when stacking cannot be used) one at a time with :func:`train`.

    The caller (``grid.run_sweep``) asks for one rate at a time, as before; :meth:`expect` tells
    which rates it will ask for next with which checkpoints, so a request trains the next K of them
    at once and keeps the rest of the pass's runs until they are asked for."""

    def __init__(self, ctx: Any, stream: Any, clip: float | None, snapshot: Any):
        self.ctx, self.stream, self.clip, self.snapshot = ctx, stream, clip, snapshot
        self.queue: dict[float, list[int]] = {}
        self.ready: dict[tuple[float, tuple[int, ...]], TrainRun] = {}
        self.passes: list[dict[str, Any]] = []
        self.k, self.reason = 1, None
        self.steps_done = 0
        self.memo: str | None = None  # how K was chosen
        on, why = wanted(ctx, ctx.settings)
        if not on:
            self.reason = why
            return
        if stream.group > 1:  # a stacked pass takes one batch a step
            self.reason = f"each step accumulates {stream.group} batches (torchrun's effective batch)"
            return
        self.reason = refusal(ctx)

    def expect(self, rates: list[float], checkpoints: list[int]) -> None:
        self.queue = {rate: list(checkpoints) for rate in rates}

    def summary(self) -> dict[str, Any]:
        """What the raw report keeps: how many rates a pass, the passes, or why rates ran one at a time."""
        return {
            "rates_per_pass": self.k,
            "memory": self.memo or None,
            "passes": self.passes,
            "sequential_because": self.reason,
        }

    def train(self, rate: float, checkpoints: list[int], start: dict[str, Any]) -> TrainRun:
        key = (rate, tuple(checkpoints))
        if key not in self.ready and self.reason is None:
            group = [r for r, c in self.queue.items() if c == checkpoints and (r, tuple(c)) not in self.ready]
            group = ([rate] + [r for r in group if r != rate])[: self._size()]
            if len(group) > 1:
                try:
                    for run in train_stacked(self.ctx, self.stream, group, checkpoints, self.clip, start):
                        self.ready[(run.lr, tuple(checkpoints))] = run
                        self.steps_done += len(run.losses)
                    self.passes.append({"rates": group, "steps": checkpoints[-1]})
                except Unstackable as exc:
                    self.reason = str(exc)
                except Exception as exc:  # vmap refused the forward: the sequential runs say what it was
                    from nandoctor.errors import describe

                    self.reason = f"the stacked pass raised {describe(exc)}"
                finally:
                    self.snapshot.restore()
        if key in self.ready:
            self.queue.pop(rate, None)
            return self.ready.pop(key)
        self.queue.pop(rate, None)
        run = train(self.ctx, self.stream, rate, checkpoints, self.clip, start)
        self.steps_done += len(run.losses)
        return run

    def _size(self) -> int:
        if self.k == 1 and self.memo is None:
            try:
                kind, _, _ = optimizer_rule(self.ctx.setup, [self.ctx.setup.lr])
            except Unstackable as exc:
                self.reason, self.memo = str(exc), ""
                return 1
            slots = 1 if kind == "SGD" else 2
            self.k, self.memo = copies_that_fit(self.ctx, self.ctx.settings, slots)
            if self.k < 2:
                self.reason = self.memo
        return self.k


def train_stacked(
    ctx: Any, stream: Any, rates: list[float], checkpoints: list[int], clip: float | None, start: dict[str, Any]
) -> list[TrainRun]:
    """Each rate's run, as :func:`nandoctor.sweep.training.train` would give it, trained in one pass."""
    import torch

    from nandoctor.sweep.stacked_math import StackedModel, StackedUpdate

    setup, settings = ctx.setup, ctx.settings
    kind, groups, owner = optimizer_rule(setup, rates)
    model = StackedModel(setup, [p for p in setup.model.parameters() if id(p) in owner], len(rates))
    update = StackedUpdate(kind, groups, [owner[id(p)] for p in model.originals])
    steps = checkpoints[-1]
    runs = [TrainRun(lr=rate, clip=clip, steps=steps) for rate in rates]
    for run in runs:
        run.heldout_initial, run.spread_initial = start["loss"], start["spread"]
        run.parts_initial = start.get("parts")
        run.heldout_batches = len(stream.heldout)
    alive = list(range(len(rates)))  # the run of each slice
    every = read_interval(setup.device, settings.sweep_read_every)
    pending: list[Any] = []
    with preserved_rng(), warnings.catch_warnings():
        # vmap's note that an op runs slice by slice (no batching rule) is about speed, not the user's code
        warnings.filterwarnings("ignore", message="There is a performance drop")
        torch.manual_seed(settings.seed)
        for step in range(steps):
            pending.append(model.step(stream.train(step), clip, update))
            if len(pending) < every and step + 1 not in checkpoints and step + 1 < steps:
                continue
            values = torch.stack(pending, dim=1).tolist()  # [slice][step][loss, norm]: one sync
            pending = []
            ended = [i for i, slot in enumerate(alive) if _stopped(runs[slot], values[i], False, settings)]
            if ended:
                keep = [i for i in range(len(alive)) if i not in ended]
                alive = [alive[i] for i in keep]
                if not alive:
                    break
                model.keep(keep)
                update.keep(keep)
            if step + 1 in checkpoints and stream.heldout:
                for slot, (loss, spread) in zip(alive, model.score(stream.heldout)):
                    runs[slot].heldout[step + 1], runs[slot].spread[step + 1] = loss, spread
                if start.get("parts"):  # the slices the sequential run scores (training.heldout_parts)
                    for slot, parts in zip(alive, stacked_parts(model, stream.heldout, settings.heldout_slices)):
                        runs[slot].parts[step + 1] = parts
    for run in runs:
        run.unseen_steps = min(stream.distinct, len(run.losses))
        classify(run, settings)
    return runs


def stack_note(summary: dict[str, Any]) -> str:
    """One line for the raw report: how the rates were trained."""
    if summary["passes"]:
        return f"{sum(len(p['rates']) for p in summary['passes'])} runs in {len(summary['passes'])} stacked passes"
    return f"one rate at a time: {summary['sequential_because'] or 'one rate a rung'}"


def stacked_parts(model: Any, batches: list[Any], slices: int) -> list[list[float] | None]:
    """Each copy's :func:`nandoctor.sweep.training.heldout_parts`: the loss on each slice of every
    held-out batch, None for a copy whose slices are not finite or do not average to its batch loss."""
    from nandoctor.batches import map_tensors
    from nandoctor.sweep.training import batch_size

    copies = len(model.params[0])
    parts: list[list[float] | None] = [[] for _ in range(copies)]
    for batch in batches:
        size = batch_size(batch)
        if size is None or size < slices:
            return [None] * copies
        bounds = [round(i * size / slices) for i in range(slices + 1)]
        pieces = [
            map_tensors(batch, lambda t, lo=low, hi=high: t[lo:hi] if t.dim() >= 1 and t.shape[0] == size else t)
            for low, high in zip(bounds, bounds[1:])
        ]
        try:
            per_piece = [model.score([piece]) for piece in pieces]
        except Exception:  # a loss that needs the whole batch: as the sequential run, no slices
            return [None] * copies
        whole = model.score([batch])
        for copy in range(copies):
            losses = [scores[copy][0] for scores in per_piece]
            kept = parts[copy]
            if kept is None:
                continue
            mean, total = sum(losses) / slices if None not in losses else None, whole[copy][0]
            if (
                mean is None
                or total is None
                or not all(math.isfinite(v) for v in losses)
                or abs(mean - total) > 0.05 * max(abs(total), 1e-8)
            ):
                parts[copy] = None
            else:
                kept.extend(losses)
    return [p or None for p in parts]
