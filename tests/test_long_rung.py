"""The sweep's long rung: short runs favour high rates (a slower one has had no time, a faster one
has not yet overfit), so the best rate after the second rung and its grid neighbours are trained
four times as long and the recommendation is read there."""

import json

import torch
from torch.nn import functional as F

from nandoctor import api
from nandoctor.render.sweep import render_sweep
from tests.fixtures import dynamics as fx


def _best_after_short_runs(report):
    finished = [r for r in report["runs"] if r["steps_run"] >= report["checkpoints"][-1] and r["verdict"] == "learns"]
    return min(finished, key=lambda r: r["heldout_final"])["lr"]


def _heldout_after(lr, steps):
    """The setup trained plainly, as its user would, and scored on its last batch (never trained on)."""
    built = fx.overlapping_blobs_few_batches()
    model, data = built["model"], built["data"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    for step in range(steps):
        x, y = data[step % (len(data) - 1)]
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    with torch.no_grad():
        x, y = data[-1]
        return F.cross_entropy(model(x), y).item()


def test_a_rate_that_wins_short_runs_and_then_overfits_is_not_recommended():
    report = json.loads(api.lr_sweep(fx.overlapping_blobs_few_batches).to_json())
    short_best, recommended = _best_after_short_runs(report), report["recommended_lr"]
    long_rung = report["long_rung"]
    assert long_rung["steps"] == 4 * report["checkpoints"][-1] and short_best in long_rung["rates"]
    assert recommended < short_best and recommended in long_rung["rates"]
    assert "long rung" in report["why"]
    # trained plainly for longer than the sweep, the recommendation is the better rate
    assert _heldout_after(recommended, 256) < _heldout_after(short_best, 256)
    assert "long rung, 128 steps, held-out loss:" in render_sweep(report)


def test_without_the_long_rung_the_short_runs_decide():
    report = json.loads(api.lr_sweep(fx.overlapping_blobs_few_batches, settings={"sweep_long_factor": 0}).to_json())
    assert report["long_rung"]["runs"] == [] and report["recommended_lr"] == _best_after_short_runs(report)
    assert "long rung" not in render_sweep(report)
