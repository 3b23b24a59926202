"""The Python API: what a notebook or a training script calls, and what it leaves behind."""

import dataclasses
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import nandoctor
from nandoctor.cli import app

SPECS = Path(__file__).parent / "specs"


def caller_state():
    """What a call must leave as it found it: RNG streams, torch's global flags, sys.modules."""
    return {
        "torch_rng": torch.random.get_rng_state(),
        "python_rng": random.getstate(),
        "numpy_rng": np.random.get_state()[1].copy(),
        "modules": set(sys.modules),
        "grad": torch.is_grad_enabled(),
        "dtype": torch.get_default_dtype(),
    }


def assert_same_state(before, after, modules=True):
    """``modules=False`` on a first call: torch and its libraries import their submodules lazily."""
    assert torch.equal(before["torch_rng"], after["torch_rng"]), "torch's global RNG moved"
    assert before["python_rng"] == after["python_rng"], "Python's RNG moved"
    assert np.array_equal(before["numpy_rng"], after["numpy_rng"]), "NumPy's RNG moved"
    if modules:
        assert after["modules"] == before["modules"], sorted(after["modules"] ^ before["modules"])
    assert (after["grad"], after["dtype"]) == (before["grad"], before["dtype"])


def test_import_and_help_stay_light_and_the_api_is_listed():
    code = (
        "import sys, nandoctor\n"
        "names = dir(nandoctor)\n"
        "assert {'diagnose', 'lr_sweep', 'feature_stats', 'Report'} <= set(names), names\n"
        "sys.stderr.write(' '.join(m for m in ('torch', 'pandas') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_diagnose_a_spec_string_gives_a_typed_report():
    report = nandoctor.diagnose("nandoctor.examples.small_vocab:build", quick=True, progress=False)
    assert isinstance(report, nandoctor.Report)
    assert report.verdict == "unhealthy" and report.exit_code() == 1
    first = report.findings[0]
    assert isinstance(first, nandoctor.Finding) and first.code == "index_out_of_range"
    assert first.severity == nandoctor.Severity.CRITICAL
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.code = "other"
    data = json.loads(report.to_json())
    assert data == report.to_dict() and data["spec"] == "nandoctor.examples.small_vocab:build"
    assert data["findings"][0] == first.to_dict()
    assert report.coverage["batches_checked"] >= 1
    assert "index_out_of_range" in str(report) and "index_out_of_range" in report._repr_markdown_()
    assert nandoctor.Report.from_dict(data) == report


def test_diagnose_a_mapping_leaves_model_hooks_modes_and_rng_as_found():
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 3))
    model[1].eval()  # a frozen norm layer: it must stay in eval mode
    hook = model[0].register_forward_hook(lambda m, i, o: None)
    inputs = [torch.randn(8, 6) for _ in range(3)]
    batches = [(x, x[:, :3].argmax(1)) for x in inputs]  # labels that follow from the inputs
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    spec = {"model": model, "data": batches, "loss": lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])}
    for call in range(2):  # the second call must leave even sys.modules as it was
        before = caller_state()
        report = nandoctor.diagnose(spec, progress=False)
        assert_same_state(before, caller_state(), modules=call > 0)
    assert report.spec == "<python>" and report.verdict == "healthy", str(report)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    assert model.training and not model[1].training
    assert list(model[0]._forward_hooks.values()) == [hook.hooks_dict_ref()[hook.id]]
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in list(model)[1:])


def test_diagnose_a_build_function_with_overrides():
    from nandoctor.examples.healthy import build

    messages = []
    report = nandoctor.diagnose(build, overrides={"lr": 1e-3}, quick=True, progress=messages.append)
    assert report.verdict == "healthy" and report.spec == "nandoctor.examples.healthy:build"
    assert any("loading" in m for m in messages)
    with pytest.raises(nandoctor.UsageError, match="does not accept"):
        nandoctor.diagnose(build, overrides={"nope": 1}, progress=False)
    with pytest.raises(nandoctor.UsageError, match="already built"):
        nandoctor.diagnose(build(), overrides={"lr": 1.0}, progress=False)
    with pytest.raises(nandoctor.UsageError, match="expected a SPEC"):
        nandoctor.diagnose(42, progress=False)


def test_a_build_file_and_its_siblings_are_forgotten_after_the_call():
    """The user's file (and the sibling it imports) were imported for the call only."""
    spec = f"{SPECS}/good_spec.py:build"
    had_sibling = "helper_module" in sys.modules  # another test may have imported it without the API
    for call in range(2):  # twice: the second call must find and leave the process the same
        before = caller_state()
        report = nandoctor.diagnose(spec, probes=["forward"], progress=False)
        assert report.verdict == "healthy"
        assert_same_state(before, caller_state(), modules=call > 0)
        assert ("helper_module" in sys.modules) == had_sibling
        assert {m for m in sys.modules if m.startswith("nandoctor_user_")} <= before["modules"]


def test_the_cli_in_process_leaves_rng_and_sys_modules_as_found():
    """Issue 10 item 11: the CLI used to leave torch at manual_seed(0) and the user's module loaded."""
    torch.manual_seed(123)
    runner = CliRunner()
    had_sibling = "helper_module" in sys.modules
    commands = [
        ["diagnose", f"{SPECS}/good_spec.py:build", "--probe", "forward"],
        ["lr-sweep", f"{SPECS}/good_spec.py:build", "--lrs", "1e-3,1e-2", "--steps", "2"],
    ]
    for call in range(2):  # the first call may import nandoctor's and torch's own modules lazily
        for command in commands:
            before = caller_state()
            result = runner.invoke(app, command)
            assert result.exit_code == 0, result.output
            assert_same_state(before, caller_state(), modules=call > 0)
            assert ("helper_module" in sys.modules) == had_sibling


def test_lr_sweep_api():
    before = caller_state()
    sweep = nandoctor.lr_sweep("nandoctor.examples.healthy:build", lrs=[1e-3, 1e-2], steps=3, progress=False)
    assert_same_state(before, caller_state(), modules=False)
    assert [r["lr"] for r in sweep.runs] == [1e-3, 1e-2] and sweep.user_lr == 1e-3
    assert "recommended" in str(sweep) or "no recommendation" in str(sweep)
    assert json.loads(sweep.to_json())["runs"][0]["lr"] == 1e-3
    with pytest.raises(nandoctor.UsageError, match="at least 2"):
        nandoctor.lr_sweep("nandoctor.examples.healthy:build", steps=1, progress=False)
    with pytest.raises(nandoctor.UsageError, match="positive"):
        nandoctor.lr_sweep("nandoctor.examples.healthy:build", lrs=[-1.0], progress=False)


def test_feature_stats_api(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "table.csv"
    rows = ["time,charge"] + [f"{t},{c}" for t, c in zip(rng.uniform(0, 1e4, 500), rng.normal(0, 1, 500))]
    path.write_text("\n".join(rows) + "\n")
    stats = nandoctor.feature_stats(path, progress=False)
    assert stats.rows == 500 and set(stats.columns) == {"time", "charge"}
    assert "time" in stats.flagged and "charge" not in stats.flagged
    assert "time" in str(stats) and json.loads(stats.to_json())["rows"] == 500
    with pytest.raises(nandoctor.UsageError, match="no such file"):
        nandoctor.feature_stats(tmp_path / "missing.csv", progress=False)


def test_the_core_never_imports_the_frameworks():
    """Hugging Face and Lightning code is recognised by duck typing: neither is imported by a diagnosis."""
    code = (
        "import sys, nandoctor, nandoctor.integrations.hf, nandoctor.integrations.lightning\n"
        "nandoctor.diagnose('nandoctor.examples.healthy:build', quick=True, progress=False)\n"
        "sys.stderr.write(' '.join(m for m in ('transformers', 'pytorch_lightning', 'lightning', 'accelerate')"
        " if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
