"""Captures keep a batch's structure: namedtuple and dataclass batches round-trip and replay."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from nandoctor.cli import app
from nandoctor.guard import Guard, GuardTripped

SPEC = """
import collections
import dataclasses

import torch
from torch import nn
import torch.nn.functional as F

Pair = collections.namedtuple("Pair", "x y")


@dataclasses.dataclass
class Sample:
    x: torch.Tensor
    y: torch.Tensor


def loss(model, batch):
    return F.cross_entropy(model(batch.x), batch.y)


def build(kind: str = "namedtuple"):
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    g = torch.Generator().manual_seed(0)
    make = Pair if kind == "namedtuple" else Sample
    data = [make(torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(4)]
    return {"model": model, "data": data, "loss": loss, "lr": 1e-2}
"""


def _guarded_capture(tmp_path, kind, check_every=1, optimizer_class=torch.optim.AdamW):
    """A guarded loop over ``kind`` batches whose step 6 holds a NaN input; returns the capture's path."""
    (tmp_path / "spec.py").write_text(SPEC)
    namespace: dict = {}
    exec(compile(SPEC, str(tmp_path / "spec.py"), "exec"), namespace)
    torch.manual_seed(0)
    setup = namespace["build"](kind)
    model, make = setup["model"], namespace["Pair" if kind == "namedtuple" else "Sample"]
    optimizer = optimizer_class(model.parameters(), lr=setup["lr"])
    g = torch.Generator().manual_seed(5)
    with pytest.raises(GuardTripped):
        with Guard(
            model,
            optimizer,
            path=str(tmp_path / "capture.pt"),
            spec=f"{tmp_path / 'spec.py'}:build",
            spec_args={"kind": kind},
            check_every=check_every,
        ) as guard:
            for step in range(10):
                batch = make(torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g))
                if step == 6:
                    batch.x[2, 1] = float("nan")
                loss = setup["loss"](model, batch)
                optimizer.zero_grad()
                loss.backward()
                guard.step(loss, batch)
                optimizer.step()
    return tmp_path / "capture.pt"


@pytest.mark.parametrize("kind", ["namedtuple", "dataclass"])
def test_a_structured_batch_is_captured_and_replayed(tmp_path, kind):
    capture = _guarded_capture(tmp_path, kind)
    result = CliRunner().invoke(app, ["replay", str(capture), "--format", "json", "--trust-spec"])
    report = json.loads(result.stdout)
    assert report["replay"]["reproduced"] is True, result.output
    assert report["findings"][0]["code"] == "nonfinite_input"


def _capture_naming(tmp_path, spec, spec_args=None):
    from nandoctor.guard.capture import save_capture

    model = torch.nn.Linear(2, 1)
    return save_capture(
        tmp_path / "shared.pt",
        {
            "model": model.state_dict(),
            "optimizer": None,
            "scaler": None,
            "rng": None,
            "reason": "nonfinite_loss",
            "step": 1,
            "window_start": 0,
            "batches": [torch.randn(4, 2)],
            "lrs": [[1e-3]],
            "ring": [],
            "spec": spec,
            "spec_args": spec_args or {},
        },
    )


def test_replay_never_runs_a_spec_the_capture_chose(tmp_path):
    marker = tmp_path / "pwned"
    capture = _capture_naming(tmp_path, "os:system", {"command": f"touch {marker}"})
    for extra in ([], ["--trust-spec"]):
        result = CliRunner().invoke(app, ["replay", str(capture), *extra])
        assert result.exit_code == 2 and not marker.exists(), result.output
        assert "os:system" in result.stderr and "--spec" in result.stderr
    assert "command='touch" in CliRunner().invoke(app, ["replay", str(capture)]).stderr  # shown, not run


def test_a_relative_spec_path_is_found_from_another_folder(tmp_path, monkeypatch):
    (tmp_path / "spec.py").write_text(SPEC)
    capture = _capture_naming(tmp_path, "spec.py:build")
    payload = torch.load(capture, weights_only=True)
    payload["spec_folder"] = str(tmp_path)
    torch.save(payload, capture)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    refused = CliRunner().invoke(app, ["replay", str(capture)])
    assert refused.exit_code == 2 and "--trust-spec" in refused.stderr
    result = CliRunner().invoke(app, ["replay", str(capture), "--trust-spec", "--format", "json"])
    assert "not a file here" not in result.stderr and "does not match the capture" in result.stderr, result.output


def test_malformed_and_corrupt_captures_are_one_line_each(tmp_path):
    from nandoctor.guard.capture import save_capture

    spec = tmp_path / "spec.py"
    spec.write_text(SPEC)
    good = {
        "model": {},
        "reason": "nonfinite_loss",
        "step": 2,
        "window_start": 1,
        "batches": [torch.zeros(2)] * 2,
        "lrs": [[1e-3], [1e-3]],
        "ring": [],
        "spec": f"{spec}:build",
    }
    cases = {
        "no_batches": dict(good, batches=[]),
        "no_step": {k: v for k, v in good.items() if k != "step"},
        "nan_rates": dict(good, lrs=[[float("nan")], [1e-3]]),
        "ring": dict(good, ring=[1, 2]),
    }
    for name, payload in cases.items():
        save_capture(tmp_path / f"{name}.pt", payload)
        result = CliRunner().invoke(app, ["replay", str(tmp_path / f"{name}.pt"), "--trust-spec"])
        assert result.exit_code == 2 and "malformed capture" in result.stderr, (name, result.output)
        assert len(result.stderr.strip().splitlines()) <= 2, result.stderr  # the spec shown, then the one error
    whole = (tmp_path / "no_step.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(whole[: len(whole) // 2])
    result = CliRunner().invoke(app, ["replay", str(tmp_path / "truncated.pt")])
    assert result.exit_code == 2 and "corrupt" in result.stderr and "pickled code" not in result.stderr


def test_a_capture_of_another_model_names_the_keys_that_differ(tmp_path):
    (tmp_path / "spec.py").write_text(SPEC)
    capture = _capture_naming(tmp_path, f"{tmp_path / 'spec.py'}:build")
    result = CliRunner().invoke(app, ["replay", str(capture), "--trust-spec"])
    assert result.exit_code == 2 and "Missing key(s)" in result.stderr and "0.weight" in result.stderr


def _edited(capture, edit):
    payload = torch.load(capture, weights_only=True)
    edit(payload["batches"])
    torch.save(payload, capture)
    return CliRunner().invoke(app, ["replay", str(capture), "--format", "json", "--trust-spec"])


def test_a_failure_that_does_not_happen_again_is_incomplete_not_healthy(tmp_path):
    def heal(batches):  # the failing batch, finite: the failure cannot recur
        batches[-1]["fields"]["x"].nan_to_num_(0.0)

    result = _edited(_guarded_capture(tmp_path, "namedtuple"), heal)
    report = json.loads(result.stdout)
    assert result.exit_code == 3 and report["verdict"] == "incomplete", result.output
    assert report["replay"]["reproduced"] is False and "did not happen again" in json.dumps(report["coverage"])


def test_a_replay_that_fails_earlier_says_where_it_parts_from_the_run(tmp_path):
    def poison(batches):  # an earlier batch of the window holds a NaN the recorded run did not see
        batches[0]["fields"]["x"][0, 0] = float("nan")

    capture = _guarded_capture(tmp_path, "namedtuple", check_every=4)
    assert len(torch.load(capture, weights_only=True)["batches"]) > 1  # a window of several steps
    report = json.loads(_edited(capture, poison).stdout)
    assert any("fails at step" in note and "already" in note for note in report["replay"]["notes"]), report["replay"]


def test_a_capture_of_another_optimizer_replays_with_a_fresh_one_and_says_so(tmp_path):
    capture = _guarded_capture(tmp_path, "namedtuple", check_every=4, optimizer_class=torch.optim.SGD)
    result = CliRunner().invoke(app, ["replay", str(capture), "--format", "json", "--trust-spec"])
    report = json.loads(result.stdout)  # the spec trains with AdamW: SGD's groups have no betas
    assert result.exit_code == 1 and report["replay"]["reproduced"] is True, result.output
    assert any("another optimizer's state" in note and "betas" in note for note in report["replay"]["notes"])
