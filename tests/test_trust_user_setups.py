"""Setups a user has that must not be called broken (issue 19): the caller's grad mode, ..."""

from __future__ import annotations

import pytest
import torch

import nandoctor
from nandoctor.errors import UsageError

HEALTHY = "nandoctor.examples.healthy:build"


@pytest.mark.parametrize(
    "block",
    [torch.no_grad, lambda: torch.set_grad_enabled(False), torch.inference_mode],
    ids=["no_grad", "set_grad_enabled_false", "inference_mode"],
)
def test_diagnose_inside_a_no_gradient_block_turns_gradients_on_for_itself(block):
    with block():
        report = nandoctor.diagnose(HEALTHY, quick=True, progress=False)
        assert not torch.is_grad_enabled()  # the caller's mode is back
    assert report.verdict == "healthy", [(f.code, f.title) for f in report.findings]
    assert not report.coverage["probes_not_run"]


def test_a_model_built_under_inference_mode_is_one_clear_usage_error():
    from nandoctor.examples.healthy import build

    with torch.inference_mode():
        built = build()
    with pytest.raises(UsageError, match="inference_mode"):
        nandoctor.diagnose(built, quick=True, progress=False)


def _frozen_classifier(frozen: bool):
    from torch import nn

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    for parameter in model.parameters():
        parameter.requires_grad_(not frozen)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    return {
        "model": model,
        "data": [(x, y)] * 4,
        "loss": lambda m, batch: torch.nn.functional.cross_entropy(m(batch[0]), batch[1]),
    }


def test_a_model_with_nothing_trainable_gets_its_finding_and_no_internal_error():
    report = nandoctor.diagnose(_frozen_classifier(frozen=True), progress=False)
    assert [f.code for f in report.findings] == ["vanishing_gradients"]
    assert not report.coverage["probes_not_run"], report.coverage  # no "internal error" for the training probes
    assert report.probes["dynamics"] == {"skipped": "nothing to train: no parameter requires grad"}
    assert "internal error" not in str(report)
    twin = nandoctor.diagnose(_frozen_classifier(frozen=False), progress=False)
    assert "dynamics" in twin.coverage["probes_run"] and "steps" in twin.coverage["probes_run"]


def _invoke(*args):
    from typer.testing import CliRunner

    from nandoctor.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_sys_exit_in_the_build_is_a_usage_error_not_our_exit():
    from pathlib import Path

    specs = Path(__file__).parent / "specs"
    result = _invoke("diagnose", f"{specs}/exits.py:build_exits", "--quick")
    assert result.exit_code == 2 and "build function called sys.exit(0)" in result.stderr, result.output
    loader = _invoke("diagnose", f"{specs}/exits.py:build_loader_exits", "--quick")
    assert loader.exit_code == 2 and "data loader called sys.exit(0)" in loader.stderr, loader.output


def test_sys_exit_in_the_loss_is_a_finding_at_the_users_line():
    import json
    from pathlib import Path

    specs = Path(__file__).parent / "specs"
    result = _invoke("diagnose", f"{specs}/exits.py:build_loss_exits", "--quick", "--format", "json")
    assert result.exit_code == 1, result.output  # a report, not the user's exit code 3
    top = json.loads(result.stdout)["findings"][0]
    assert top["code"] == "forward_error" and "sys.exit(3)" in top["title"]
    assert "exits.py" in (top["where"]["source"] or "") or "exits.py" in json.dumps(top["evidence"])
    fine = _invoke("diagnose", f"{specs}/exits.py:build_fine", "--quick")
    assert fine.exit_code == 0, fine.output


@pytest.mark.parametrize("kind", ["lbfgs", "gradient_penalty"])
def test_closure_optimizers_and_gradient_penalties_run_every_probe(kind):
    import json
    from pathlib import Path

    spec = f"{Path(__file__).parent / 'specs'}/closures.py:build"
    result = _invoke("diagnose", spec, "--set", f"kind={kind}", "--format", "json")
    report = json.loads(result.stdout)
    assert result.exit_code == 0 and report["verdict"] == "healthy", result.output
    assert {"dynamics", "steps"} <= set(report["coverage"]["probes_run"]) and not report["coverage"]["probes_not_run"]
    sweep = _invoke("lr-sweep", spec, "--set", f"kind={kind}", "--format", "json")
    assert sweep.exit_code == 0 and json.loads(sweep.stdout)["recommended_lr"] is not None, sweep.output


def test_user_output_on_descriptor_1_never_lands_in_the_json(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    spec = f"{Path(__file__).parent / 'specs'}/noisy.py:build"
    done = subprocess.run(
        [sys.executable, "-m", "nandoctor", "diagnose", spec, "--quick", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["verdict"] == "healthy"  # pure JSON: the user's writes went to stderr
    assert "from-os-write-in-the-loss" in done.stderr and "from-os-system-in-the-build" in done.stderr


def test_a_training_step_that_raises_stops_the_run_the_same_way_everywhere():
    import json
    from pathlib import Path

    spec = f"{Path(__file__).parent / 'specs'}/exits.py:build_step_raises"
    result = _invoke("diagnose", spec, "--format", "json")
    report = json.loads(result.stdout)
    assert result.exit_code == 3 and report["verdict"] == "incomplete", result.output
    missed = report["coverage"]["probes_not_run"]
    assert "step 1 raised ValueError: the weights moved" in missed["dynamics"]
    assert "step 1 raised ValueError: the weights moved" in report["probes"]["steps"]["stopped"]
    sweep = _invoke("lr-sweep", spec)
    assert sweep.exit_code == 2 and "raised ValueError: the weights moved (lr 0.001, step 1" in sweep.stderr


def test_the_api_takes_built_settings_as_it_takes_a_mapping():
    from nandoctor.settings import Settings

    report = nandoctor.diagnose(HEALTHY, quick=True, settings=Settings(batches=2), progress=False)
    assert report.coverage["batches_checked"] == 2
    with pytest.raises(UsageError, match="at least 1"):
        nandoctor.diagnose(HEALTHY, quick=True, settings=Settings(batches=2), batches=0, progress=False)
