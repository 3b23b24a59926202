"""Batches of every shape a user hands over, and spec mistakes said plainly instead of ignored."""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from nandoctor.batches import iter_tensors, map_tensors, read_batches
from nandoctor.errors import UsageError
from nandoctor.spec import validate
from tests.test_leaves_no_trace import QUICK


class Records(Dataset):
    """A dataset with one bad record, as a CSV with a stray label would have."""

    def __len__(self):
        return 64

    def __getitem__(self, index):
        if index == 37:
            raise ValueError("record 37 of train.csv: label 'cat' is not a number")
        return torch.randn(3), torch.tensor(0.0)


def test_a_dataloader_worker_error_shows_the_workers_own_message():
    loader = DataLoader(Records(), batch_size=8, num_workers=2)
    with pytest.raises(UsageError) as raised:
        read_batches(loader, 8)
    message = str(raised.value)
    assert "record 37 of train.csv: label 'cat' is not a number" in message
    assert "DataLoader worker process" in message and "test_batches_and_spec_checks.py" in message
    assert message.startswith("reading batches from 'data' raised ValueError") and "after 4 good" in message


@dataclass
class Batch:
    features: torch.Tensor
    target: torch.Tensor
    source: str = "train"
    seen: int = field(default=0, init=False)


Pair = namedtuple("Pair", "features target")


def test_dataclass_batches_are_walked_and_mapped():
    batch = Batch(torch.zeros(2, 3), torch.ones(2, 1))
    assert [path for path, _ in iter_tensors(batch)] == ["features", "target"]
    moved = map_tensors(batch, lambda t: t + 1)
    assert isinstance(moved, Batch) and moved.source == "train" and float(moved.target[0, 0]) == 2.0
    assert [path for path, _ in iter_tensors((Pair(torch.zeros(1), torch.zeros(1)), 3))] == ["0.features", "0.target"]


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x):
        return self.net(x)


def _raw_scale_batches(make):
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(3):
        x = torch.randn(32, 4, generator=g)
        x[:, 2] = x[:, 2] * 3000 + 20000  # a raw time feature
        batches.append(make(x, torch.randn(32, 1, generator=g)))
    return batches


def test_dataclass_batches_are_diagnosed(diagnose):
    report = diagnose(
        {
            "model": Regressor(),
            "data": _raw_scale_batches(Batch),
            "loss": lambda m, b: F.mse_loss(m(b.features), b.target),
        },
        probes=QUICK,
    )
    assert report["findings"][0]["code"] == "unnormalized_input"
    assert report["findings"][0]["where"]["feature"] == "features[2]"


def test_namedtuple_features_are_named_by_field(diagnose):
    report = diagnose(
        {
            "model": Regressor(),
            "data": _raw_scale_batches(Pair),
            "loss": lambda m, b: F.mse_loss(m(b.features), b.target),
        },
        probes=QUICK,
    )
    assert report["findings"][0]["where"]["feature"] == "features[2]"


def _setup(**extra):
    return dict(
        {
            "model": Regressor(),
            "data": [(torch.randn(8, 4), torch.randn(8, 1))],
            "loss": lambda m, b: F.mse_loss(m(b[0]), b[1]),
        },
        **extra,
    )


def test_a_misspelt_key_warns_with_the_nearest_known_key(capsys):
    validate(_setup(lerning_rate=1e-4), "spec.py:build")
    err = capsys.readouterr().err
    assert "'lerning_rate'" in err and "did you mean 'lr'?" in err
    validate(_setup(grad_clp=1.0, lr=1e-3), "spec.py:build")
    assert "did you mean 'grad_clip'?" in capsys.readouterr().err
    validate(_setup(lr=1e-3, amp=None), "spec.py:build")
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "names, message",
    [
        ("time,charge", "must be a list of names"),
        ([1.5, 2.5], "must be a non-empty list of names"),
        ({"0": "time"}, "must be a list of names"),
    ],
)
def test_feature_names_of_the_wrong_type_are_a_usage_error(names, message):
    with pytest.raises(UsageError, match=message):
        validate(_setup(feature_names=names), "spec.py:build")


@pytest.mark.parametrize(
    "names, message",
    [
        (["a", "b", "c"], "lists 3 names but no float input"),
        ({0: ["a", "b"]}, "lists 2 names but '0' has 4 features"),
        ({"pulses": ["a", "b", "c", "d"]}, "names 'pulses', but the batches hold no float input there"),
    ],
)
def test_feature_names_that_do_not_fit_the_batches_are_a_usage_error(names, message, diagnose):
    with pytest.raises(UsageError, match=message):
        diagnose(_setup(feature_names=names), probes=QUICK)


def test_feature_names_from_a_pandas_index_are_used(diagnose):
    import pandas as pd

    built = _setup(feature_names=pd.Index(["t", "q", "x", "y"]))
    built["data"] = _raw_scale_batches(lambda x, y: (x, y))
    report = diagnose(built, probes=QUICK)
    assert report["findings"][0]["where"]["feature"] == "x"
