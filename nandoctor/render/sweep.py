"""``lr-sweep`` output: the per-rate table and the loss / gradient-norm plot."""

from __future__ import annotations

import math
from typing import Any

from nandoctor.errors import UsageError


def _g(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:,.4g}" if abs(value) < 1e6 else f"{value:.3e}"


def render_sweep(report: dict[str, Any]) -> str:
    from tabulate import tabulate

    rows = []
    for run in report["runs"]:
        marks = []
        if run["lr"] == report["user_run_lr"]:
            marks.append("<- yours")
        if run["lr"] == report["recommended_lr"]:
            marks.append("<- recommended")
        loss = f"{_g(run['initial_loss'])} -> {_g(run['final_loss'])}"
        if run["nonfinite_step"] is not None:
            loss += f" (NaN/Inf at step {run['nonfinite_step']})"
        decreasing = "yes" if run["verdict"] == "learns" else "no"
        rows.append([f"{run['lr']:.3g}", _g(run["max_grad_norm"]), loss, decreasing, run["verdict"], " ".join(marks)])
    head = (f"LR sweep of {report['spec']}: {report['steps']} steps per rate, optimizer {report['optimizer']}, "
            f"grad_clip {report['grad_clip']}, amp {report['amp']}")
    table = tabulate(rows, headers=["rate", "max grad norm", "loss (train batches)", "loss decreasing?",
                                    "stability", ""], tablefmt="simple", disable_numparse=True)
    if report["recommended_lr"] is None:
        verdict = f"no recommendation: {report['why']}"
    else:
        verdict = f"recommended lr: {report['recommended_lr']:.3g} ({report['why']}); yours: {report['user_lr']:.3g}"
    return "\n".join([head, table, "", verdict])


def plot_sweep(report: dict[str, Any], path: str) -> None:
    """Loss and gradient norm per step, one curve per rate (matplotlib, an optional extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise UsageError("--plot needs matplotlib: pip install 'nandoctor[plot]'") from exc
    figure, (loss_axis, norm_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.cm.viridis([i / max(len(report["runs"]) - 1, 1) for i in range(len(report["runs"]))])
    nonnegative = all(l >= 0 for r in report["runs"] for l in r["losses"] if math.isfinite(l))
    for run, color in zip(report["runs"], colors):
        label = f"lr {run['lr']:.3g} ({run['verdict']})"
        if run["lr"] == report["user_run_lr"]:
            label += " yours"
        if run["lr"] == report["recommended_lr"]:
            label += " recommended"
        width = 2.8 if run["lr"] in (report["user_run_lr"], report["recommended_lr"]) else 1.2
        style = "--" if run["lr"] == report["user_run_lr"] else "-"
        loss_axis.plot([l if math.isfinite(l) and (l > 0 or not nonnegative) else float("nan") for l in run["losses"]],
                       color=color, lw=width, ls=style, label=label)
        norm_axis.plot([g if math.isfinite(g) else float("nan") for g in run["grad_norms"]],
                       color=color, lw=width, ls=style)
    starts = [r["initial_loss"] for r in report["runs"] if r["initial_loss"] is not None and math.isfinite(r["initial_loss"])]
    if nonnegative:
        loss_axis.set_yscale("log")
    if starts:  # diverging rates would squash every other curve: show up to 10x the starting loss
        top = max(abs(v) for v in starts)
        loss_axis.set_ylim(top=10 * top if nonnegative else top + 10 * max(top, 1e-3))
    norm_axis.set_yscale("log")
    loss_axis.set(title="training loss per step", xlabel="step", ylabel="loss")
    norm_axis.set(title="gradient norm before clipping", xlabel="step", ylabel="global grad norm")
    loss_axis.legend(fontsize=8)
    figure.suptitle(f"nandoctor lr-sweep {report['spec']}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
