"""The text of ``nandoctor replay``: what failed, whether it failed again, what changed before it."""

from __future__ import annotations

from typing import Any

from nandoctor.render.common import number
from nandoctor.render.text import render_text

REASONS = {
    "nonfinite_loss": "the loss was NaN/Inf",
    "nonfinite_grad": "a gradient was NaN/Inf",
    "loss_spike": "the loss spiked",
}


def render_replay(report: dict[str, Any]) -> str:
    replay = report["replay"]
    again = "it fails again" if replay["reproduced"] else "it did NOT fail again"
    lines = [
        f"replay of {replay['capture']}: at step {replay['step']} {REASONS.get(replay['reason'], replay['reason'])}; "
        f"re-ran steps {replay['window_start']}..{replay['step']} from the capture: {again}"
    ]
    lines += [
        f"  step {s['step']}: loss {number(s['loss'])}, gradient norm {number(s['grad_norm'])}"
        for s in replay["steps"][-5:]
    ]
    if replay["changes"]:
        lines += ["", "What changed over the last steps:"] + [f"  - {c['text']}" for c in replay["changes"]]
    lines += [f"note: {note}" for note in replay["notes"]]
    return "\n".join(lines) + "\n\n" + render_text(report)
