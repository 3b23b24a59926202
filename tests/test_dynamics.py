"""Training dynamics: the sweep's findings, fixes that really train, state safety, the command."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from nandoctor.cli import app
from nandoctor.runner import open_context
from nandoctor.settings import Settings
from nandoctor.spec import validate
from nandoctor.sweep.grid import default_grid, run_sweep
from nandoctor.sweep.training import LEARNS, train
from tests.fixtures.dynamics import DYNAMICS_CASES
from tests.test_state import _assert_same, _snapshot

FIXTURES = Path(__file__).parent / "fixtures" / "dynamics.py"
runner = CliRunner()


@pytest.mark.parametrize("case", [c for c, v in DYNAMICS_CASES.items() if v.fix])
def test_fix_names_the_config_key_and_trains(case, diagnose):
    bad = DYNAMICS_CASES[case].build
    spec_key, config_key = DYNAMICS_CASES[case].fix
    finding = diagnose(bad())["findings"][0]
    assert list(finding["fix"]["config"]) == [config_key]
    value = finding["fix"]["config"][config_key]
    torch.manual_seed(0)
    original = validate(bad(), "original")
    with open_context(original, Settings()) as ctx:
        before = train(ctx, original.lr, 20, original.grad_clip)
    torch.manual_seed(0)
    fixed = bad()
    fixed[spec_key] = value
    setup = validate(fixed, "fixed")
    with open_context(setup, Settings()) as ctx:
        run = train(ctx, setup.lr, 20, setup.grad_clip)
    assert run.verdict == LEARNS and run.drop > 0.1, run.to_dict()
    assert run.drop > before.drop


def test_sweep_restores_the_model_even_when_interrupted():
    built = DYNAMICS_CASES["adamw_diverges"].build()
    calls = {"n": 0}
    loss = built["loss"]

    def interrupting(model, batch):
        calls["n"] += 1
        if calls["n"] == 25:
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
    result = runner.invoke(app, ["lr-sweep", f"{FIXTURES}:adamw_diverges", "--lrs", "0.001,0.03,3",
                                 "--steps", "10", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert "<- yours" in result.stdout and "<- recommended" in result.stdout
    assert "max grad norm" in result.stdout and "stability" in result.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(runner.invoke(app, ["lr-sweep", f"{FIXTURES}:adamw_diverges", "--lrs", "0.001,3",
                                          "--steps", "5", "--format", "json"]).stdout)
    assert [r["lr"] for r in data["runs"]] == [0.001, 3.0]
    assert data["runs"][1]["verdict"] == "diverged" and data["recommended_lr"] == 0.001


@pytest.mark.parametrize("args, message", [
    (["--lrs", "fast"], "--lrs takes comma-separated numbers"),
    (["--lrs", "-1"], "positive"),
    (["--steps", "1"], "at least 2"),
])
def test_lr_sweep_bad_options_exit_2(args, message):
    result = runner.invoke(app, ["lr-sweep", f"{FIXTURES}:adamw_diverges", *args])
    assert result.exit_code == 2 and message in result.stderr


def test_lr_sweep_on_a_crashing_model_is_one_line(tmp_path):
    spec = Path(__file__).parent / "specs" / "good_spec.py"
    result = runner.invoke(app, ["lr-sweep", f"{spec}:build_index_error", "--steps", "2"])
    assert result.exit_code == 2
    assert "a training step raised IndexError" in result.stderr and "Traceback" not in result.output


def test_quick_skips_the_sweep():
    result = runner.invoke(app, ["diagnose", "nandoctor.examples.healthy:build", "--quick", "--format", "json"])
    assert "dynamics" not in json.loads(result.stdout)["probes"]


def test_sweep_budget_keeps_the_nearest_rates():
    setup = validate(DYNAMICS_CASES["adamw_diverges"].twin(), "test")
    progress = []
    with open_context(setup, Settings()) as ctx:
        runs = run_sweep(ctx, [1e-5, 1e-4, 1e-3, 1e-2, 1e-1], 20, None, progress.append,
                         budget_s=1e-9, center=1e-3)
    assert [r.lr for r in runs] == [1e-3]  # the user's rate always runs, first
    assert "budget" in progress[-1]
