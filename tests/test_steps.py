"""``diagnose`` trains the user's own configuration: a NaN that appears at step k is traced to its op and line."""

import importlib.util
import json

import torch
from torch import nn
from torch.nn import functional as F
from typer.testing import CliRunner

from nandoctor.cli import app
from nandoctor.probes.steps import StepsProbe
from tests.fixtures.dynamics import blob_batches

HAS_OP_PASS = importlib.util.find_spec("nandoctor.measure.ops") is not None


def handwritten_ce(model, batch):
    probs = torch.softmax(model(batch["x"]), dim=-1)
    return -(torch.log(probs) * F.one_hot(batch["y"], 4)).sum(-1).mean()  # log(0) once softmax saturates


LOG_LINE = handwritten_ce.__code__.co_firstlineno + 2


def library_ce(model, batch):
    return F.cross_entropy(model(batch["x"]), batch["y"])


def build(lr: float = 0.09, loss: str = "handwritten"):
    """At lr 0.09 the hand-written loss first goes NaN at step 10; at 0.06, at step 27."""
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    return {
        "model": model,
        "data": blob_batches(),
        "lr": lr,
        "loss": handwritten_ce if loss == "handwritten" else library_ce,
    }


def test_a_nan_at_step_10_is_named_at_its_log_op_and_line(diagnose):
    report = diagnose(build())
    top = report["findings"][0]
    assert top["code"] == "forward_nonfinite" and top["evidence"]["after_steps"] == 10
    assert top["evidence"]["lr"] == 0.09 and "log_softmax" in top["fix"]["advice"]
    assert report["probes"]["forward"]["loss"] is not None  # step 0 itself is finite: only training finds it
    if HAS_OP_PASS:
        assert top["where"]["op"] == "aten::log" and top["where"]["source"].endswith(f"test_steps.py:{LOG_LINE}")
        assert top["evidence"]["kind"] == "unsafe op"
    codes = [f["code"] for f in report["findings"]]
    assert "lr_too_high" not in codes or codes.index("lr_too_high") > 0  # the rate is the trigger, not the cause


def test_the_library_loss_at_the_same_rate_trains_without_a_nan(diagnose):
    report = diagnose(build(loss="library"), probes=_needed())
    assert report["probes"]["steps"]["nonfinite_step"] is None and report["probes"]["steps"]["steps_run"] == 40
    assert not [f for f in report["findings"] if f["evidence"].get("after_steps") is not None]


def test_a_different_healthy_model_is_left_alone(diagnose):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    data = [(torch.randn(32, 6, generator=g), torch.randn(32, 2, generator=g)) for _ in range(4)]
    model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.LayerNorm(32), nn.Linear(32, 2))
    report = diagnose(
        {"model": model, "data": data, "lr": 3e-3, "loss": lambda m, b: F.mse_loss(m(b[0]), b[1])}, probes=_needed()
    )
    assert report["findings"] == [] and report["probes"]["steps"]["steps_run"] == 40


def test_steps_option_decides_how_far_diagnose_trains():
    """At lr 0.06 the NaN waits for step 27: 20 steps miss it, the default catches it."""
    runner = CliRunner()
    args = ["diagnose", "tests.test_steps:build", "--set", "lr=0.06", "--probe", "steps", "--format", "json"]
    short = json.loads(runner.invoke(app, args + ["--steps", "20"]).stdout)
    assert short["probes"]["steps"]["steps_run"] == 20 and short["findings"] == []
    default = runner.invoke(app, args)
    assert default.exit_code == 1
    report = json.loads(default.stdout)
    assert report["findings"][0]["evidence"]["after_steps"] == 27


def _needed():
    from nandoctor.probes.backward import BackwardProbe
    from nandoctor.probes.forward import ForwardProbe

    return [ForwardProbe, BackwardProbe, StepsProbe]
