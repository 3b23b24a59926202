"""``lr-sweep`` output: the per-rate table and the loss / gradient-norm plot."""

from __future__ import annotations

import math
from typing import Any

from nandoctor.errors import UsageError
from nandoctor.sweep.plan import plan_note


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
        heldout = (
            f"{_g(run['heldout_initial'])} -> {_g(run['heldout_final'])}" if run["heldout_initial"] is not None else "-"
        )
        if run["nonfinite_step"] is not None:
            heldout = f"NaN/Inf at step {run['nonfinite_step']}"
        note = run["cut"] or ""
        rows.append(
            [
                f"{run['lr']:.3g}",
                run["steps_run"],
                heldout,
                _g(run["final_loss"]),
                _g(run["max_grad_norm"]),
                run["verdict"],
                " ".join(marks),
                note,
            ]
        )
    batches = report["batches"]
    head = (
        f"LR sweep of {report['spec']}: every rate from the same start for {report['checkpoints'][0]} steps, the "
        f"better half to {report['checkpoints'][-1]}; optimizer {report['optimizer']}, "
        f"grad_clip {report['grad_clip']}, "
        f"amp {report['amp']}; {batches['distinct_training']} training batches ({batches['fresh_read']} read fresh), "
        f"{batches['heldout']} held out" + (f"; {batches['ranks_note']}" if batches.get("ranks_note") else "")
    )
    table = tabulate(
        rows,
        headers=["rate", "steps", "held-out loss", "train loss (last 1/4)", "max grad norm", "verdict", "", "note"],
        tablefmt="simple",
        disable_numparse=True,
    )
    lines = [head, table, ""]
    lines += [f"grid: {line}" for line in report["grid_extended"]]
    lines += _long_rung_lines(report.get("long_rung") or {})
    note = plan_note(report.get("plan") or {})
    if note:
        lines.append(f"plan: {note}")
    if report["rates_not_run"] or report["rates_not_continued"]:
        lines.append(
            "not judged (time): "
            + ", ".join(f"{r:.3g}" for r in report["rates_not_run"] + report["rates_not_continued"])
        )
    if report["recommended_lr"] is None:
        lines.append(f"no recommendation: {report['why']}")
    else:
        lines.append(
            f"recommended lr: {report['recommended_lr']:.3g} ({report['why']}); yours: {report['user_lr']:.3g}"
        )
    if report.get("user_diverged"):
        lines.append(f"your rate {report['user_lr']:.3g} diverges")
    return "\n".join(lines)


def _long_rung_lines(long_rung: dict[str, Any]) -> list[str]:
    """The long rung in one line: each rate's held-out loss where it ended (short runs favour high rates)."""
    runs = long_rung.get("runs") or []
    if not runs:
        return [f"long rung: {long_rung['note']}"] if long_rung.get("note") else []
    scores = ", ".join(
        f"{run['lr']:.3g}: {_g(run['heldout_final'])} ({run['verdict']})" for run in sorted(runs, key=lambda r: r["lr"])
    )
    return [f"long rung, {long_rung['steps']} steps, held-out loss: {scores}"]


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
    nonnegative = all(loss >= 0 for r in report["runs"] for loss in r["losses"] if math.isfinite(loss))
    for run, color in zip(report["runs"], colors):
        label = f"lr {run['lr']:.3g} ({run['verdict']})"
        if run["lr"] == report["user_run_lr"]:
            label += " yours"
        if run["lr"] == report["recommended_lr"]:
            label += " recommended"
        width = 2.8 if run["lr"] in (report["user_run_lr"], report["recommended_lr"]) else 1.2
        style = "--" if run["lr"] == report["user_run_lr"] else "-"
        loss_axis.plot(
            [loss if math.isfinite(loss) and (loss > 0 or not nonnegative) else float("nan") for loss in run["losses"]],
            color=color,
            lw=width,
            ls=style,
            label=label,
        )
        norm_axis.plot(
            [g if math.isfinite(g) else float("nan") for g in run["grad_norms"]], color=color, lw=width, ls=style
        )
    starts = [
        r["initial_loss"] for r in report["runs"] if r["initial_loss"] is not None and math.isfinite(r["initial_loss"])
    ]
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
