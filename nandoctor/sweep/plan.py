"""How many steps the sweep can afford, planned from the work of one training step, not from a clock.

A clock would make the same spec give different reports on a busy machine; the floating-point
operations of a training step are a property of the model and its batch. The plan assumes a
speed per device kind (``sweep_cpu_gflops``, ``sweep_gpu_gflops``) and takes the longest
schedule whose estimated cost fits ``sweep_plan_s`` at that speed: the full schedule for a small
model; fewer steps per rate and fewer rates continued to the second rung for a large one. The
wall-clock budget (``sweep_budget_s``) stays as the guard for a speed guessed too high.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from nandoctor.sweep.stream import rank_group

# (share of sweep_steps, rates continued past the first rung besides the user's (None: the better
# half), starting rates kept nearest the user's (None: the whole grid), the long rung run); the first
# that fits is taken: the long rung is the first thing a large model gives up
SCHEDULES = (
    (1.0, None, None, True),
    (1.0, None, None, False),
    (0.75, None, None, False),
    (0.5, None, None, False),
    (0.5, 2, None, False),
    (0.375, 2, None, False),
    (0.25, 2, None, False),
    (0.25, 1, None, False),
    (0.25, 1, 7, False),
)

#: rates the long rung trains, at most at first: the best after the second rung, the next lower one, the user's
LONG_RATES = 3


@dataclass(frozen=True)
class Plan:
    steps: int  # the rates continued to the end train this many steps; every rate a quarter of them
    continued: int | None  # rates continued past the first rung besides the user's (None: the better half)
    starting_rates: int | None = None  # the starting grid's rates nearest the user's kept (None: all)
    guard_steps: int = 0  # the steps probe trains the user's configuration this many steps
    step_gflop: float | None = None  # one forward + backward, counted; None when it could not be
    assumed_gflops: float | None = None
    affordable_steps: float | None = None
    scaled: bool = False  # shorter than the full schedule
    full_steps: int = 0  # the full schedule's steps (sweep_steps)
    long_steps: int = 0  # the long rung's steps (0: none): the best rate and its neighbours, judged there

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def first_rung(steps: int) -> int:
    """Every rate trains this many steps before the worse half stops."""
    return max(2, math.ceil(steps / 4))


def estimated_steps(steps: int, continued: int | None, rates: int, long_steps: int = 0) -> int:
    """Optimizer steps of a schedule: every rate (and two grid extensions) to the first rung, the
    continued ones and the user's own rate replayed to the end, the long rung's rates replayed to it."""
    kept = math.ceil(rates / 2) if continued is None else min(continued, rates)
    return (rates + 2) * first_rung(steps) + (kept + 1) * steps + LONG_RATES * long_steps


def _flops(name: str, args: tuple, out: Any) -> float:
    """Multiply-adds x 2 of one torch function call; 0 for what is not a matrix product or convolution."""
    import torch

    if not isinstance(out, torch.Tensor):
        out = out[0] if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor) else None
        if out is None:
            return 0.0
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    # a matrix product: two FLOPs per output element and inner index
    if name == "linear" and len(tensors) >= 2:
        return 2.0 * out.numel() * tensors[1].shape[-1]
    if name in ("matmul", "mm", "bmm", "__matmul__", "__rmatmul__") and len(tensors) >= 2:
        first = tensors[0] if name != "__rmatmul__" else tensors[1]
        return 2.0 * out.numel() * first.shape[-1]
    if name in ("addmm", "baddbmm", "addbmm") and len(tensors) >= 3:
        return 2.0 * out.numel() * tensors[1].shape[-1]
    if name.startswith("conv_transpose") and len(tensors) >= 2:
        return 2.0 * tensors[0].numel() * tensors[1][0].numel()
    if name.startswith("conv") and len(tensors) >= 2:
        return 2.0 * out.numel() * tensors[1][0].numel()
    if name == "scaled_dot_product_attention" and len(tensors) >= 2:
        query, key = tensors[0], tensors[1]
        return 4.0 * query.numel() * key.shape[-2]
    return 0.0


def step_gflop(ctx: Any) -> float | None:
    """GFLOP of one training step on the first cached batch: the matrix products and convolutions of
    a forward (no gradient), counted at the torch-function level, x 3 for the backward.

    A torch-function mode, not a dispatch mode: the first dispatch mode in a process costs seconds
    of imports inside torch. The caller restores buffers the forward may move (batch-norm
    statistics). None when nothing could be counted (the forward needs gradients, or its products
    are ops this does not know)."""
    import torch
    from torch.overrides import TorchFunctionMode

    from nandoctor.step import autocast

    total = [0.0]

    class Counter(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            total[0] += _flops(getattr(func, "__name__", ""), args, out)
            return out

    def recurrent(module: Any, args: tuple, output: Any) -> None:
        """A fused RNN kernel is one call the mode does not see: its weights meet every position."""
        if args and isinstance(args[0], torch.Tensor) and args[0].dim() >= 2:
            positions = args[0].numel() // args[0].shape[-1]
        elif args and hasattr(args[0], "data") and isinstance(args[0].data, torch.Tensor):  # a PackedSequence
            positions = args[0].data.shape[0]
        else:
            return
        total[0] += 2.0 * positions * sum(p.numel() for n, p in module.named_parameters() if n.startswith("weight_"))

    handles = [m.register_forward_hook(recurrent) for m in ctx.model.modules() if isinstance(m, torch.nn.RNNBase)]
    try:
        with torch.no_grad(), Counter(), autocast(ctx.setup):
            ctx.loss(ctx.batches[0])
    except Exception:  # the plan falls back on the wall-clock guard
        return None
    finally:
        for handle in handles:
            handle.remove()
    return 3.0 * total[0] / 1e9 if total[0] > 0 else None


def plan_sweep(ctx: Any, rates: int, steps: int | None = None) -> Plan:
    """The schedule for ``rates`` starting rates; ``steps`` given (``lr-sweep --steps``) is kept as asked."""
    settings = ctx.settings
    guard = settings.guard_steps
    if steps is not None:
        return Plan(steps=steps, continued=None, guard_steps=guard)
    if "sweep_plan" in ctx.shared:
        return ctx.shared["sweep_plan"]
    from nandoctor.state import run_snapshot

    asked = not settings.is_default("guard_steps")

    snapshot = run_snapshot(ctx)  # taken before the counted forward moves any buffer
    gflop = step_gflop(ctx)
    snapshot.restore()
    if gflop is not None:  # under torchrun a step accumulates several of a rank's batches: that many times the work
        gflop *= rank_group(ctx)[0]
    speed = settings.sweep_gpu_gflops if ctx.setup.device.type == "cuda" else settings.sweep_cpu_gflops
    full = settings.sweep_steps
    long_steps = settings.sweep_long_factor * full
    plan = Plan(
        steps=full,
        continued=None,
        guard_steps=guard,
        step_gflop=gflop,
        assumed_gflops=speed,
        full_steps=full,
        long_steps=long_steps,
    )
    if gflop is not None:
        affordable = settings.sweep_plan_s * speed / gflop
        for share, continued, starting, long_rung in SCHEDULES:
            length = max(4, round(full * share))
            scaled = share < 1.0 or continued is not None or starting is not None
            if long_rung and not long_steps:
                continue
            # scaled down, the steps probe reads the sweep's run of the user's rate instead of its own
            # (unless steps were asked for: diagnose --steps)
            plan = Plan(
                steps=length,
                continued=continued,
                starting_rates=starting,
                guard_steps=length if scaled and not asked else guard,
                step_gflop=gflop,
                assumed_gflops=speed,
                affordable_steps=affordable,
                scaled=scaled,
                full_steps=full,
                long_steps=long_steps if long_rung else 0,
            )
            if estimated_steps(length, continued, min(rates, starting or rates), plan.long_steps) <= affordable:
                break
    ctx.shared["sweep_plan"] = plan
    return plan


def plan_note(plan: dict[str, Any]) -> str | None:
    """One sentence for a shortened plan (None for the full schedule): why, and how to ask for more."""
    if not plan.get("scaled"):
        return None
    kept = "the better half" if plan["continued"] is None else f"{plan['continued']} best"
    grid = f", the {plan['starting_rates']} starting rates nearest yours" if plan.get("starting_rates") else ""
    return (
        f"the sweep was shortened for this model's size ({plan['step_gflop']:.3g} GFLOP a step, planned at "
        f"{plan['assumed_gflops']:g} GFLOP/s): {plan['steps']} steps, {kept} and yours continued{grid}; "
        f"`nandoctor lr-sweep SPEC --steps {plan['full_steps']}` judges the rates over longer runs"
    )
