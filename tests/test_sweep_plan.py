"""The sweep's plan: from the counted FLOPs of a step, the same on every run; a large model gets a
shorter schedule (fewer steps, fewer rates continued, a narrower starting grid) that diagnose and
lr-sweep share, and the steps probe reads the sweep's run of the user's rate instead of its own."""

import json

import pytest
import torch

from nandoctor.render.sweep import render_sweep
from nandoctor.runner import open_context, run_probes, select_probes
from nandoctor.settings import Settings
from nandoctor.spec import validate
from nandoctor.sweep.grid import sweep_rates
from nandoctor.sweep.plan import SCHEDULES, estimated_steps, plan_sweep, step_gflop
from nandoctor.sweep_report import sweep_report
from tests.fixtures import dynamics as fx
from tests.test_steps import build as steps_fixture

# a machine this slow makes even the tiny fixtures "large": the shortest schedule
SLOW = {"sweep_cpu_gflops": 1e-6}


def plan_for(built, **settings):
    torch.manual_seed(0)
    setup = validate(built, "test")
    chosen = Settings(**settings)
    with open_context(setup, chosen) as ctx:
        return plan_sweep(ctx, len(sweep_rates(setup, chosen)))


def probes_on(built, names, **settings):
    torch.manual_seed(0)
    parts = run_probes(
        validate(built, "test"),
        Settings(**settings),
        select_probes(names, None, lambda m: None),
        progress=lambda m: None,
    )
    return parts["probes"], [f.to_dict() for f in parts["findings"]]


def test_a_small_model_gets_the_full_schedule_and_the_plan_is_the_same_every_run():
    first, second = plan_for(fx.adamw_right()), plan_for(fx.adamw_right())
    assert first == second
    assert (first.steps, first.continued, first.starting_rates, first.scaled) == (32, None, None, False)
    assert first.long_steps == 4 * 32  # and the long rung
    assert first.step_gflop > 0 and first.guard_steps == Settings().guard_steps


def test_counted_flops_grow_with_the_batch_and_counting_leaves_batch_norm_statistics_alone():
    model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.BatchNorm1d(64), torch.nn.Linear(64, 2))

    def gflop(rows):
        data = [(torch.randn(rows, 8), torch.randint(0, 2, (rows,))) for _ in range(3)]
        setup = validate({"model": model, "data": data, "loss": fx.xy_ce}, "test")
        with open_context(setup, Settings()) as ctx:
            return step_gflop(ctx)

    small, large = gflop(16), gflop(64)
    assert large == 4 * small and small == 3 * 2 * 16 * (8 * 64 + 64 * 2) / 1e9  # forward x 3: the step
    before = model[1].running_mean.clone()  # step_gflop alone leaves restoring to its caller; the plan restores
    setup = validate(
        {"model": model, "data": [(torch.randn(4, 8) + 5, torch.zeros(4, dtype=torch.long))] * 2, "loss": fx.xy_ce},
        "test",
    )
    with open_context(setup, Settings()) as ctx:
        plan_sweep(ctx, 9)
    assert torch.equal(model[1].running_mean, before)


def test_a_large_model_gets_a_shorter_schedule_that_still_judges_seven_rates():
    plan = plan_for(fx.adamw_right(), **SLOW)
    steps, continued, starting, _ = SCHEDULES[-1]
    assert plan.scaled and (plan.continued, plan.starting_rates) == (continued, starting)
    assert plan.steps == round(Settings().sweep_steps * steps) and plan.guard_steps == plan.steps
    # each shorter schedule costs less than the one before it
    costs = [
        estimated_steps(round(32 * share), kept, min(9, first or 9), 128 if long_rung else 0)
        for share, kept, first, long_rung in SCHEDULES
    ]
    assert costs == sorted(costs, reverse=True)

    raw, _ = probes_on(fx.adamw_right(), ["dynamics"], **SLOW)
    dynamics = raw["dynamics"]
    assert dynamics["plan"]["scaled"] and dynamics["checkpoints"] == [2, 8]
    assert len(dynamics["runs"]) >= 7
    finished = [r for r in dynamics["runs"] if r["steps_run"] == 8]
    assert 1 <= len(finished) <= 2  # the best one, and the user's own


def test_diagnose_and_lr_sweep_share_the_shorter_plan_and_its_recommendation():
    raw, findings = probes_on(fx.adamw_ten_times_high(), ["dynamics"], **SLOW)
    assert [f["code"] for f in findings] == ["lr_too_high"]
    torch.manual_seed(0)
    report = sweep_report("test", validate(fx.adamw_ten_times_high(), "test"), Settings(**SLOW), None, None)
    assert report["plan"] == raw["dynamics"]["plan"]
    assert report["recommended_lr"] == raw["dynamics"]["recommended_lr"]
    # a verdict from shortened runs says so, and how to ask for longer ones
    assert "plan: the sweep was shortened" in render_sweep(report) and "--steps 32" in render_sweep(report)
    assert all("shortened" in f["fix"]["advice"] for f in findings if f["code"].startswith("lr_"))
    assert "plan:" not in render_sweep(sweep_report("test", validate(fx.adamw_right(), "test"), Settings(), None, None))


def test_the_steps_probe_reads_the_sweeps_run_when_the_plan_is_short_and_trains_its_own_otherwise():
    raw, _ = probes_on(fx.adamw_right(), ["dynamics", "steps"], **SLOW)
    assert raw["steps"]["read_from"] and raw["steps"]["steps_run"] == 8
    raw, _ = probes_on(fx.adamw_right(), ["dynamics", "steps"])
    assert "read_from" not in raw["steps"] and raw["steps"]["steps_run"] == Settings().guard_steps
    raw, _ = probes_on(fx.adamw_right(), ["dynamics", "steps"], guard_steps=12, **SLOW)  # diagnose --steps 12
    assert "read_from" not in raw["steps"] and raw["steps"]["steps_run"] == 12


def test_a_nan_in_the_sweeps_run_of_the_users_rate_is_traced_from_that_run():
    """The hand-written log loss of test_steps goes NaN inside the sweep's run of the user's rate: the
    steps probe replays those steps and names the op and line, without training that rate again."""
    raw, findings = probes_on(steps_fixture(), ["dynamics", "steps"])
    steps = raw["steps"]
    assert steps["read_from"] and steps["nonfinite_step"] is not None
    assert steps["trace"]["op"] == "aten::log" and steps["trace"]["kind"] == "unsafe op"
    assert findings[0]["code"] == "forward_nonfinite"
    assert findings[0]["evidence"]["after_steps"] == steps["nonfinite_step"]


def test_convolutions_and_attention_are_counted_as_well_as_linear_layers():
    class ConvAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv1d(4, 8, 3)  # (2, 4, 10) -> (2, 8, 8)
            self.head = torch.nn.Linear(8, 3)

        def forward(self, x):
            h = self.conv(x).transpose(1, 2)  # (2, 8 positions, 8 channels)
            h = torch.nn.functional.scaled_dot_product_attention(h, h, h)
            return self.head(h.mean(1))

    data = [(torch.randn(2, 4, 10), torch.randint(0, 3, (2,))) for _ in range(2)]
    setup = validate({"model": ConvAttention(), "data": data, "loss": fx.xy_ce}, "test")
    with open_context(setup, Settings()) as ctx:
        counted = step_gflop(ctx) * 1e9 / 3
    conv, attention, head = 2 * (2 * 8 * 8) * (4 * 3), 4 * (2 * 8 * 8) * 8, 2 * 2 * 8 * 3
    assert counted == conv + attention + head


def test_lr_sweep_takes_the_settings_file_diagnose_takes(tmp_path):
    from typer.testing import CliRunner

    from nandoctor.cli import app

    settings = tmp_path / "slow.yaml"
    settings.write_text("sweep_cpu_gflops: 0.000001\n")
    spec = f"{fx.__file__}:adamw_ten_times_high"
    result = CliRunner().invoke(app, ["lr-sweep", spec, "--settings", str(settings), "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["plan"]["scaled"] and report["checkpoints"] == [2, 8]
    missing = CliRunner().invoke(app, ["lr-sweep", spec, "--settings", str(tmp_path / "none.yaml")])
    assert missing.exit_code == 2 and "no such settings file" in missing.output


def test_a_fused_recurrent_layer_is_counted_at_every_position_and_its_hook_removed():
    class Recurrent(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.LSTM(32, 64, batch_first=True)
            self.head = torch.nn.Linear(64, 2)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    model = Recurrent()
    data = [(torch.randn(8, 50, 32), torch.randint(0, 2, (8,))) for _ in range(2)]
    setup = validate({"model": model, "data": data, "loss": fx.xy_ce}, "test")
    with open_context(setup, Settings()) as ctx:
        counted = step_gflop(ctx) * 1e9 / 3
    assert counted == 2 * (8 * 50) * 4 * 64 * (32 + 64) + 2 * 8 * 64 * 2  # four gates, input and hidden weights
    assert not any(m._forward_hooks for m in model.modules())


def test_short_runs_make_too_low_and_no_signal_hints_not_warnings():
    """Over 8 steps a higher rate nearly always looks better: under a shortened plan the tiny BERT
    of the zoo at its healthy rate drew an lr_too_low warning, and an LSTM too low drew a critical
    loss_plateau. Both are info there; the verdict comes from what short runs can show."""
    pytest.importorskip("transformers")
    from tests.zoo import ZOO
    from tests.zoo.run import judge

    case = next(c for c in ZOO if c.id == "bert-healthy")
    torch.manual_seed(0)
    parts = run_probes(
        validate(case.build(), "zoo"),
        Settings(**SLOW),
        select_probes(["dynamics"], None, lambda m: None),
        progress=lambda m: None,
    )
    found = [f.to_dict() for f in parts["findings"]]
    assert parts["probes"]["dynamics"]["plan"]["scaled"]
    assert judge(case, {"findings": found})[0], found
    assert all(f["severity"] == "info" for f in found if f["code"] in ("lr_too_low", "loss_plateau"))
