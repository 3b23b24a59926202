"""Training dynamics: verdicts judged against other rates, the control run, the command, state safety."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from nandoctor.cli import app
from nandoctor.runner import open_context, run_probes, select_probes
from nandoctor.settings import Settings
from nandoctor.spec import validate
from nandoctor.sweep.grid import default_grid, recommend, run_sweep
from nandoctor.sweep.stream import BatchStream
from nandoctor.sweep.training import BAD, COLLAPSED, LEARNS, train
from nandoctor.sweep_report import sweep_report
from tests.fixtures import dynamics as fx
from tests.fixtures.dynamics import DYNAMICS_CASES
from tests.test_state import _assert_same, _snapshot

FIXTURES = Path(__file__).parent / "fixtures" / "dynamics.py"
runner = CliRunner()


def dynamics_only(built, **settings):
    """The dynamics probe (and what it needs) on one setup: (findings as dicts, its raw table)."""
    torch.manual_seed(0)
    parts = run_probes(
        validate(built, "test"),
        Settings(**settings),
        select_probes(["dynamics"], None, lambda m: None),
        progress=lambda m: None,
    )
    return [f.to_dict() for f in parts["findings"]], parts["probes"]["dynamics"], parts["coverage"]


def trained(built, lr=None):
    torch.manual_seed(0)
    setup = validate(built, "test")
    settings = Settings()
    with open_context(setup, settings) as ctx:
        stream = BatchStream(ctx, settings.sweep_stream_batches)
        return train(ctx, stream, lr or setup.lr, [settings.sweep_steps], setup.grad_clip)


@pytest.mark.parametrize("case", [c for c, v in DYNAMICS_CASES.items() if v.fix])
def test_fix_names_the_config_key_and_trains(case, diagnose):
    bad = DYNAMICS_CASES[case].build
    spec_key, config_key = DYNAMICS_CASES[case].fix
    finding = diagnose(bad())["findings"][0]
    assert list(finding["fix"]["config"]) == [config_key]
    value = finding["fix"]["config"][config_key]
    before = trained(bad())
    fixed = bad()
    fixed[spec_key] = value
    after = trained(fixed)
    assert after.verdict == LEARNS, after.to_dict()
    assert after.score < before.score or before.verdict in BAD


def test_ten_times_too_high_is_judged_against_a_lower_rate_even_when_its_loss_falls():
    """Spikes and gradient growth switched off: the verdict comes from the comparison alone."""
    run = trained(fx.adamw_ten_times_high())
    assert run.drop > 0.1  # its own held-out loss falls: an absolute rule calls this "learns"
    findings, raw, _ = dynamics_only(fx.adamw_ten_times_high(), spike_rise=1e9, grad_growth=1e9)
    codes = [f["code"] for f in findings]
    assert codes[0] == "lr_too_high", findings
    assert findings[0]["evidence"]["share_of_fall_missed"] > 0.3
    assert raw["recommended_lr"] < 0.1 and "sweep" in findings[0]["evidence"]


def test_a_collapsing_rate_is_never_recommended():
    report = sweep_report("test", validate(fx.adamw_right(), "test"), Settings(), [0.003, 0.01, 0.3, 1.0], None)
    verdicts = {r["lr"]: r["verdict"] for r in report["runs"]}
    assert COLLAPSED in verdicts.values() or verdicts[0.3] in BAD, verdicts
    assert verdicts[report["recommended_lr"]] == LEARNS
    assert report["recommended_lr"] not in (0.3, 1.0)


def test_collapse_is_told_by_outputs_that_no_longer_depend_on_the_input():
    torch.manual_seed(0)
    setup = validate(fx.adamw_collapses(), "test")
    with open_context(setup, Settings(spike_rise=1e9, grad_growth=1e9, diverged_rise=1e9, blowup_rise=1e9)) as ctx:
        run = train(ctx, BatchStream(ctx, 64), 1.0, [32], None)
    assert run.verdict in (COLLAPSED, "diverged"), run.to_dict()
    if run.verdict == COLLAPSED:
        assert run.spread[32] < 0.05 * run.spread_initial


def test_sgd_three_decades_too_low_finds_a_rate_that_trains():
    findings, raw, _ = dynamics_only(fx.sgd_too_low())
    assert findings[0]["code"] == "lr_too_low"
    best = raw["recommended_lr"]
    assert best >= 1e-5 * 1e3
    assert any("highest tried" in line for line in raw["grid_extended"])
    assert trained(fx.sgd_too_low(lr=best)).verdict == LEARNS


def test_user_rate_that_is_the_best_has_no_lr_finding():
    setup = fx.clip_fine()  # a regressor: another architecture than the classifiers above
    setup["optimizer"] = lambda ps, lr: torch.optim.SGD(ps, lr=lr)
    best = sweep_report("test", validate(setup, "test"), Settings(), None, None)["recommended_lr"]
    again = fx.clip_fine()
    again["optimizer"], again["lr"] = setup["optimizer"], best
    findings, raw, _ = dynamics_only(again)
    assert raw["recommended_lr"] == best
    assert not [f for f in findings if f["code"].startswith("lr_")], findings


def test_many_classes_and_few_batches_is_not_a_plateau_but_shuffled_labels_are():
    findings, raw, _ = dynamics_only(fx.many_classes_few_batches())
    assert "loss_plateau" not in [f["code"] for f in findings]
    control = raw["control"]  # ruled out by the control run, or without it because the held-out loss fell
    assert control.get("signal") is True or (control["heldout_drop"] >= 0.05 and "skipped" in control), control
    findings, raw, _ = dynamics_only(fx.retrieval_shuffled())
    assert [f["code"] for f in findings] == ["loss_plateau"]
    assert raw["control"]["permuted_paths"] == ["1"]


def test_a_rate_that_diverges_is_critical_even_when_nothing_lower_learns():
    built = fx.shuffled_labels()
    built["lr"] = 100.0
    findings, raw, _ = dynamics_only(built)
    high = next(f for f in findings if f["code"] == "lr_too_high")
    assert high["severity"] == "critical"
    assert raw["runs"][0]["lr"] < 100.0 and "no rate" in high["title"] or raw["recommended_lr"] is not None


def test_diagnose_and_lr_sweep_recommend_the_same_rate_for_every_fixture():
    for name, case in DYNAMICS_CASES.items():
        for build in (case.build, case.twin):
            torch.manual_seed(0)
            _, raw, _ = dynamics_only(build())
            torch.manual_seed(0)
            report = sweep_report(name, validate(build(), name), Settings(), None, None)
            assert raw["recommended_lr"] == report["recommended_lr"], (name, build.__name__)


def test_training_reads_fresh_batches_and_never_the_held_out_one():
    built = fx.adamw_right()
    heldout = built["data"][3]  # the fourth batch read is held out (4 are cached)
    seen = []
    loss = built["loss"]
    built["loss"] = lambda model, batch: (seen.append(batch[0]), loss(model, batch))[1]
    setup = validate(built, "test")
    with open_context(setup, Settings()) as ctx:
        stream = BatchStream(ctx, 64)
        train(ctx, stream, 1e-2, [20], None)
        assert stream.fresh_read == len(built["data"]) - 4
    trained_on = [b for b in seen if b.shape == heldout[0].shape]
    assert any(torch.equal(b, built["data"][-1][0]) for b in trained_on)  # a batch past the cached ones
    assert stream.heldout and torch.equal(stream.heldout[0][0], heldout[0])


def test_sweep_restores_the_model_even_when_interrupted():
    built = DYNAMICS_CASES["adamw_diverges"].build()
    calls = {"n": 0}
    loss = built["loss"]

    def interrupting(model, batch):
        calls["n"] += 1
        if calls["n"] == 15:
            raise KeyboardInterrupt
        return loss(model, batch)

    built["loss"] = interrupting
    setup = validate(built, "test")
    before = _snapshot(setup.model)
    with open_context(setup, Settings()) as ctx, pytest.raises(KeyboardInterrupt):
        run_sweep(ctx, [1e-3, 1e-2], 20, None)
    _assert_same(before, _snapshot(setup.model))


def test_default_grid_is_two_decades_each_way_on_nice_values():
    assert default_grid(3e-4) == [3e-06, 1e-05, 3e-05, 1e-04, 3e-04, 1e-03, 3e-03, 1e-02, 3e-02]
    assert 2.5e-4 in default_grid(2.5e-4)


def test_lr_sweep_command_table_json_and_plot(tmp_path):
    png = tmp_path / "sweep.png"
    result = runner.invoke(
        app, ["lr-sweep", f"{FIXTURES}:adamw_fine", "--lrs", "0.001,0.03,3", "--steps", "8", "--plot", str(png)]
    )
    assert result.exit_code == 0, result.output
    assert "<- yours" in result.stdout and "<- recommended" in result.stdout
    assert "held-out loss" in result.stdout and "verdict" in result.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = runner.invoke(
        app, ["lr-sweep", f"{FIXTURES}:adamw_diverges", "--lrs", "0.001,3", "--steps", "5", "--format", "json"]
    )
    assert result.exit_code == 1  # the user's own rate diverges
    data = json.loads(result.stdout)
    assert [r["lr"] for r in data["runs"]] == [0.001, 3.0]
    assert data["runs"][1]["verdict"] == "diverged" and data["recommended_lr"] == 0.001 and data["user_diverged"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lrs", "fast"], "--lrs takes comma-separated numbers"),
        (["--lrs", "-1"], "finite positive"),
        (["--lrs", "0"], "finite positive"),
        (["--lrs", "inf"], "finite positive"),
        (["--lrs", "nan"], "finite positive"),
        (["--lrs", "1e308"], "between"),
        (["--set", "lr=inf"], "'lr' must be a finite positive number"),
        (["--set", "lr=1e308"], "'lr' must be between"),
        (["--set", "lr=0"], "'lr' must be a finite positive number"),
        (["--steps", "1"], "at least 2"),
    ],
)
def test_lr_sweep_bad_rates_and_options_exit_2_in_one_line(args, message):
    result = runner.invoke(app, ["lr-sweep", f"{FIXTURES}:adamw_diverges", *args])
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert [line for line in result.stderr.splitlines() if "error" in line] == [result.stderr.strip().splitlines()[-1]]
    assert "Traceback" not in result.output


def test_diagnose_refuses_an_infinite_rate():
    result = runner.invoke(app, ["diagnose", f"{FIXTURES}:adamw_diverges", "--set", "lr=inf"])
    assert result.exit_code == 2 and "finite positive" in result.stderr


def test_lr_sweep_on_a_crashing_model_is_one_line(tmp_path):
    spec = Path(__file__).parent / "specs" / "good_spec.py"
    result = runner.invoke(app, ["lr-sweep", f"{spec}:build_index_error", "--steps", "2"])
    assert result.exit_code == 2
    assert "a training step raised IndexError" in result.stderr and "Traceback" not in result.output


def test_quick_skips_the_sweep():
    result = runner.invoke(app, ["diagnose", "nandoctor.examples.healthy:build", "--quick", "--format", "json"])
    assert "dynamics" not in json.loads(result.stdout)["probes"]


def test_rates_dropped_for_time_make_the_verdict_incomplete():
    findings, raw, coverage = dynamics_only(fx.adamw_right(), sweep_budget_s=1e-9)
    assert [r["lr"] for r in raw["runs"]] == [0.01]  # the user's rate always runs, first
    assert raw["rates_not_run"] and "dynamics" in coverage["probes_not_run"]
    assert "not judged" in coverage["probes_not_run"]["dynamics"]


def test_recommendation_ties_go_to_the_larger_rate():
    settings = Settings()
    setup = validate(fx.adamw_right(), "test")
    with open_context(setup, settings) as ctx:
        sweep = run_sweep(ctx, [0.003, 0.01, 0.03], 16, None, extend=False)
    best, _ = recommend(sweep, Settings(tie_tolerance=10.0))  # everything ties
    assert best.lr == max(r.lr for r in sweep.runs if r.verdict not in BAD)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GradScaler runs on CUDA only")
def test_fp16_scaler_calibrating_is_not_divergence():
    built = fx.adamw_right()
    built.update(amp="fp16", device="cuda")
    torch.manual_seed(0)
    setup = validate(built, "test")
    with open_context(setup, Settings()) as ctx:
        run = train(ctx, BatchStream(ctx, 64), 1e-2, [20], None)
    assert run.nonfinite_step is None and run.verdict == LEARNS, run.to_dict()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GradScaler runs on CUDA only")
def test_fp16_steps_skipped_while_the_scale_drops_are_counted_not_divergence():
    """A loss weighted x1000: at GradScaler's first scale (65536) its half-precision gradients overflow,
    so the first steps are skipped while the scale comes down; the run still learns."""
    built = fx.adamw_right()
    built.update(amp="fp16", device="cuda", loss=lambda model, batch: 1000 * fx.xy_ce(model, batch))
    torch.manual_seed(0)
    setup = validate(built, "test")
    with open_context(setup, Settings()) as ctx:
        run = train(ctx, BatchStream(ctx, 64), 1e-2, [20], None)
    assert run.skipped_steps > 0 and run.nonfinite_step is None and run.verdict == LEARNS, run.to_dict()


def test_scaler_skips_count_as_divergence_only_past_the_limit_in_a_row():
    """The bookkeeping behind the CUDA GradScaler path, checked on plain numbers (no GPU needed)."""
    from nandoctor.sweep.training import TrainRun, _stopped

    limits = Settings(amp_skip_limit=2)
    inf = float("inf")
    run = TrainRun(lr=1e-3, clip=None, steps=8)
    assert not _stopped(run, [[1.0, inf], [1.0, inf], [1.0, 0.5], [1.0, inf], [1.0, inf]], True, limits)
    assert run.skipped_steps == 4 and run.nonfinite_step is None
    assert _stopped(run, [[1.0, inf]], True, limits) and run.nonfinite_step == 5  # the third in a row
    unscaled = TrainRun(lr=1e-3, clip=None, steps=8)
    assert _stopped(unscaled, [[1.0, 0.5], [1.0, inf]], False, limits) and unscaled.nonfinite_step == 1
