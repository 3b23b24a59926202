"""Captures keep a batch's structure: namedtuple and dataclass batches round-trip and replay."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from nandoctor.cli import app
from nandoctor.guard import Guard, GuardTripped

SPEC = '''
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
'''


@pytest.mark.parametrize("kind", ["namedtuple", "dataclass"])
def test_a_structured_batch_is_captured_and_replayed(tmp_path, kind):
    (tmp_path / "spec.py").write_text(SPEC)
    namespace: dict = {}
    exec(compile(SPEC, str(tmp_path / "spec.py"), "exec"), namespace)
    torch.manual_seed(0)
    setup = namespace["build"](kind)
    model, make = setup["model"], namespace["Pair" if kind == "namedtuple" else "Sample"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=setup["lr"])
    g = torch.Generator().manual_seed(5)
    with pytest.raises(GuardTripped):
        with Guard(model, optimizer, path=str(tmp_path / "capture.pt"), spec=f"{tmp_path / 'spec.py'}:build",
                   spec_args={"kind": kind}, check_every=1) as guard:
            for step in range(10):
                batch = make(torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g))
                if step == 6:
                    batch.x[2, 1] = float("nan")
                loss = setup["loss"](model, batch)
                optimizer.zero_grad()
                loss.backward()
                guard.step(loss, batch)
                optimizer.step()
    result = CliRunner().invoke(app, ["replay", str(tmp_path / "capture.pt"), "--format", "json"])
    report = json.loads(result.stdout)
    assert report["replay"]["reproduced"] is True, result.output
    assert report["findings"][0]["code"] == "nonfinite_input"
