"""The constant_inputs probe: an input that never changes is the cause, told apart by what the layers see."""

import torch
from torch import nn
from torch.nn import functional as F

from nandoctor.probes.constant_inputs import ConstantInputsProbe


def _run(diagnose, setup):
    return diagnose(setup, probes=[ConstantInputsProbe])


def _regression(x_of_batch):
    g = torch.Generator().manual_seed(1)
    batches = []
    for index in range(3):
        y = torch.randn(24, 1, generator=g)
        batches.append((x_of_batch(index, g), y))
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 1))
    return {"model": model, "data": batches, "loss": lambda m, b: F.mse_loss(m(b[0]), b[1])}


def test_constant_features_of_a_tabular_regression_are_critical(diagnose):
    report = _run(diagnose, _regression(lambda i, g: torch.tensor([[3.0, -1.0, 7.5, 0.25]]).repeat(24, 1)))
    top = report["findings"][0]
    assert top["code"] == "constant_input" and top["severity"] == "critical"
    assert top["evidence"]["samples"] == 72 and top["evidence"]["tensor"] == "0"
    assert top["where"]["feature"] == "0[0]"


def test_one_constant_feature_among_varying_ones_is_info(diagnose):
    def x(i, g):
        values = torch.randn(24, 4, generator=g)
        values[:, 2] = 7.5  # a constant, non-binary column
        return values

    report = _run(diagnose, _regression(x))
    assert [(f["code"], f["severity"]) for f in report["findings"]] == [("constant_input", "info")]
    assert report["findings"][0]["where"]["feature"] == "0[2]"
    assert report["verdict"] == "healthy"


class IdsWithMask(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, ids, mask):
        pooled = (self.embed(ids) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return self.head(pooled)


def test_an_all_ones_mask_beside_varying_ids_is_no_finding(diagnose):
    g = torch.Generator().manual_seed(2)
    batches = [
        {"ids": torch.randint(0, 20, (8, 5), generator=g), "mask": torch.ones(8, 5), "y": torch.randint(0, 2, (8,))}
        for _ in range(3)
    ]
    model = IdsWithMask()
    model.train()
    report = _run(
        diagnose,
        {
            "model": model,
            "data": batches,
            "loss": lambda m, b: F.cross_entropy(m(b["ids"], b["mask"]), b["y"]),
        },
    )
    assert report["findings"] == [] and report["probes"]["constant_inputs"]["layers_see_variation"] is True
    assert model.training  # the eval-mode pass restores the mode


def test_a_single_sample_is_not_judged(diagnose):
    setup = _regression(lambda i, g: torch.ones(1, 4))
    setup["data"] = [(torch.ones(1, 4), torch.zeros(1, 1))]
    report = _run(diagnose, setup)
    assert report["findings"] == [] and "skipped" in report["probes"]["constant_inputs"]
