"""One forward pass without gradients, optionally under autocast: what the precision probe compares.

It records module calls as the traced pass does (its recorder), and reads the loss, its components
and every module's output range back in one transfer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nandoctor.errors import InternalError, UsageError, describe
from nandoctor.measure.trace import ModuleCall, _Recorder, _set_output_stats


@dataclass
class ForwardPass:
    """One forward without gradients: module calls, the loss and its components (floats), or the error."""

    calls: list[ModuleCall]
    error: str | None = None
    loss: float | None = None
    components: dict[str, float] = field(default_factory=dict)


def forward_pass(ctx: Any, batch_index: int, autocast: Any = None) -> ForwardPass:
    """Module calls and loss values of one forward pass without gradients (optionally under autocast)."""
    from contextlib import nullcontext

    import torch

    model, batch = ctx.model, ctx.batches[batch_index]
    recorder = _Recorder(model)
    with recorder.handles, torch.no_grad(), autocast or nullcontext():
        recorder.install(model)
        try:
            loss = ctx.loss(batch)
        except (UsageError, InternalError):
            raise
        except Exception as exc:
            return ForwardPass(recorder.calls, describe(exc))
    device = loss.total.device
    nan3 = torch.full((3,), float("nan"), device=device)
    parts = [loss.total.detach().float().reshape(1)] + [
        c.detach().float().reshape(1).to(device) for c in loss.components.values()
    ]
    parts += [(s if s is not None else nan3).to(device) for s in recorder.out_stats]
    values = torch.cat(parts).tolist()
    total, components = values[0], dict(zip(loss.components, values[1 : 1 + len(loss.components)]))
    _set_output_stats(recorder, values[1 + len(loss.components) :])
    return ForwardPass(recorder.calls, None, total, components)
