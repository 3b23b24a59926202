"""The guard in a plain loop: an injected NaN or an LR spike at step N is caught, captured and replayed."""

import json
import textwrap

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from typer.testing import CliRunner

from nandoctor import Guard, GuardTripped
from nandoctor.cli import app
from nandoctor.guard.capture import load_capture

SPEC = textwrap.dedent("""
    import torch
    from torch import nn
    from torch.nn import functional as F

    def loss(model, batch):
        return F.cross_entropy(model(batch[0]), batch[1])

    def build(lr: float = 1e-2):
        model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 3))
        g = torch.Generator().manual_seed(0)
        data = [(torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(4)]
        return {"model": model, "data": data, "lr": lr, "loss": loss}
""")


def train_with_guard(tmp_path, bad_step=None, lr_spike_step=None, steps=40, **guard_options):
    """The user's own loop, built from the same spec file replay will read."""
    (tmp_path / "spec.py").write_text(SPEC)
    namespace: dict = {}
    exec(compile(SPEC, str(tmp_path / "spec.py"), "exec"), namespace)
    torch.manual_seed(0)
    setup = namespace["build"]()
    model = setup["model"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=setup["lr"])
    g = torch.Generator().manual_seed(5)
    options = dict(
        path=str(tmp_path / "capture.pt"), spec=f"{tmp_path / 'spec.py'}:build", check_every=4, sample_every=2
    )
    options.update(guard_options)
    with Guard(model, optimizer, **options) as guard:
        for step in range(steps):
            x, y = torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
            if step == bad_step:
                x[5, 3] = float("nan")
            if step == lr_spike_step:
                optimizer.param_groups[0]["lr"] = 1e4
            loss = setup["loss"](model, (x, y))
            optimizer.zero_grad()
            loss.backward()
            guard.step(loss, (x, y))
            optimizer.step()
    return guard


def replay_json(path, *extra):
    result = CliRunner().invoke(app, ["replay", str(path), "--format", "json", "--trust-spec", *extra])
    return result, json.loads(result.stdout) if result.stdout.strip().startswith("{") else None


def test_injected_nan_is_caught_captured_and_replayed(tmp_path):
    with pytest.raises(GuardTripped, match="at step 9") as raised:
        train_with_guard(tmp_path, bad_step=9)
    assert raised.value.path == str(tmp_path / "capture.pt")
    capture = load_capture(tmp_path / "capture.pt")
    assert capture["reason"] == "nonfinite_loss" and capture["step"] == 9 and capture["window_start"] == 8
    assert [r["step"] for r in capture["ring"]][-1] == 9
    result, report = replay_json(tmp_path / "capture.pt")
    assert result.exit_code == 1, result.output
    assert report["replay"]["reproduced"] is True
    assert [s["step"] for s in report["replay"]["steps"]] == [8, 9]
    assert report["findings"][0]["code"] == "nonfinite_input"


def test_lr_spike_is_named_as_the_trigger(tmp_path):
    with pytest.raises(GuardTripped) as raised:
        train_with_guard(tmp_path, lr_spike_step=12)
    assert raised.value.step == 13
    result, report = replay_json(tmp_path / "capture.pt")
    assert result.exit_code == 1, result.output
    assert report["replay"]["reproduced"] is True
    first_change = report["replay"]["changes"][0]
    assert first_change["what"] == "lr" and first_change["to_step"] == 12 and first_change["to"] == 1e4
    lr = next(f for f in report["findings"] if f["code"] == "lr_too_high")
    assert lr["fix"]["config"] == {"lr": 0.01}


def test_a_blow_up_in_the_first_steps_trips_against_the_first_loss(tmp_path):
    with pytest.raises(GuardTripped) as raised:  # lr 1e4 from step 0: the loss leaps at step 1, no median yet
        train_with_guard(tmp_path, lr_spike_step=0, steps=6, check_every=1)
    assert raised.value.reason == "loss_spike" and raised.value.step == 1
    assert "first loss" in str(raised.value)
    assert train_with_guard(tmp_path, steps=6, check_every=1).tripped is None  # the same loop at its own rate


def test_a_healthy_run_writes_nothing_and_leaves_no_hook(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 8, 3, padding=1), nn.GELU(), nn.Flatten(), nn.Linear(8 * 10, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    with Guard(model, optimizer, path=str(tmp_path / "c.pt"), check_every=5, sample_every=3, window=16) as guard:
        for _ in range(30):
            x = torch.randn(8, 2, 10)
            loss = F.mse_loss(model(x), x.mean((1, 2))[:, None])
            optimizer.zero_grad()
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            guard.step(loss, x, grad_norm=norm)
            optimizer.step()
    assert guard.tripped is None and not (tmp_path / "c.pt").exists()
    assert len(guard.ring) == 16 and guard.ring[-1]["step"] == 29
    assert any("activation_max" in r for r in guard.ring) and any(r["update_norm"] for r in guard.ring)
    assert all(not m._forward_hooks for m in model.modules())


def test_continue_writes_one_capture_and_lets_training_go_on(tmp_path, capsys):
    guard = train_with_guard(tmp_path, bad_step=9, on_failure="continue", steps=20)
    assert guard.tripped["step"] == 9 and guard.steps_seen == 20
    assert "training goes on" in capsys.readouterr().err


def test_a_capture_holding_code_is_refused(tmp_path):
    torch.save({"format": "nandoctor-capture", "version": 1, "hook": textwrap.dedent}, tmp_path / "evil.pt")
    result = CliRunner().invoke(app, ["replay", str(tmp_path / "evil.pt")])
    assert result.exit_code == 2
    assert "weights_only=True" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_bad_capture_files_are_usage_errors(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("hello")
    torch.save({"format": "nandoctor-capture", "version": 1, "step": 3, "model": {}}, tmp_path / "nospec.pt")
    for name, says in (
        ("missing.pt", "no such capture"),
        ("other.pt", "not a nandoctor capture"),
        ("text.pt", "not a nandoctor capture"),
        ("nospec.pt", "--spec"),
    ):
        result = CliRunner().invoke(app, ["replay", str(tmp_path / name)])
        assert result.exit_code == 2 and says in result.stderr, (name, result.output)
