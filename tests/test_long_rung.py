"""The sweep's long rung: short runs favour high rates (a slower one has had no time, a faster one
has not yet overfit), so the best rate after the second rung and the next lower one are trained
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


def test_a_rate_still_far_behind_at_the_long_rung_gets_a_hint_and_one_that_caught_up_gets_none():
    from tests.fixtures import learning
    from tests.test_dynamics import dynamics_only

    torch.manual_seed(0)  # SGD with momentum at 3e-3 on a small CNN, where 0.1 .. 0.3 train
    findings, raw, _ = dynamics_only(learning.cnn_sgd(lr=3e-3), sweep_budget_s=1e9)
    assert [(f["code"], f["severity"]) for f in findings] == [("lr_too_low", "info")], findings
    hint = findings[0]
    assert hint["evidence"]["compared_at_steps"] == raw["long_rung"]["steps"] == 128
    assert hint["fix"]["verified"]["ok"] and hint["fix"]["verified"]["steps"] == 128
    assert raw["long_rung"]["user_run"]["lr"] == 3e-3  # the user's rate ran the long rung too
    # AdamW at 3e-4 on an MLP: slower than 0.03 in 32 steps, within a tenth of its fall by 128
    torch.manual_seed(0)
    findings, raw, _ = dynamics_only(fx.adamw_diverges(lr=3e-4), sweep_budget_s=1e9)
    assert findings == [] and raw["long_rung"]["user_run"]["verdict"] == "learns"
