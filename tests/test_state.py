"""nandoctor leaves the model exactly as it found it: weights, buffers, grads, modes, RNG."""

import random

import torch
from torch import nn

from tests.fixtures.models import CASES


class WithBatchNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x):
        return self.net(x)


def _snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        {n: m.training for n, m in model.named_modules()},
        {n: p.requires_grad for n, p in model.named_parameters()},
    )


def _assert_same(before, after):
    for key in before[0]:
        assert torch.equal(before[0][key], after[0][key]), key
    for key, grad in before[1].items():
        assert (grad is None and after[1][key] is None) or torch.equal(grad, after[1][key]), key
    assert before[2] == after[2] and before[3] == after[3]


def test_model_weights_buffers_grads_modes_and_rng_are_restored(diagnose):
    model = WithBatchNorm()
    model.eval()
    model.net[2].train()  # a mixed mode must come back as it was
    model.net[0].weight.grad = torch.full_like(model.net[0].weight, 0.5)
    model.net[4].bias.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 10, generator=g), torch.randn(8, 1, generator=g)) for _ in range(2)]
    before = _snapshot(model)
    torch.manual_seed(123)
    random.seed(5)
    expected_torch, expected_py = torch.rand(3), random.random()
    torch.manual_seed(123)
    random.seed(5)
    diagnose({"model": model, "data": data, "loss": lambda m, b: nn.functional.mse_loss(m(b[0]), b[1])})
    assert torch.equal(torch.rand(3), expected_torch) and random.random() == expected_py
    _assert_same(before, _snapshot(model))


def test_model_is_restored_after_nan_and_crash_paths(diagnose):
    for case in ("pool_div_zero", "pairwise_sqrt", "sensor_vocab", "shape_error"):
        built = CASES[case].build()
        before = _snapshot(built["model"])
        diagnose(built)
        _assert_same(before, _snapshot(built["model"]))


def test_global_torch_flags_are_untouched(diagnose):
    torch.set_anomaly_enabled(False)
    dtype = torch.get_default_dtype()
    diagnose(CASES["pairwise_sqrt"].build())
    assert not torch.is_anomaly_enabled()
    assert torch.get_default_dtype() == dtype
    assert torch.is_grad_enabled()


def test_one_pass_generator_data_is_read_once_and_reused(diagnose):
    reads = []

    def batches():
        for i in range(10):
            reads.append(i)
            x = torch.randn(4, 10)
            yield x, x[:, :1] - x[:, 1:2]  # learnable targets: random ones are a loss_plateau

    report = diagnose(
        {
            "model": WithBatchNorm(),
            "data": batches(),
            "lr": 3e-2,  # 1e-3 barely moves it
            "loss": lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]),
        }
    )
    assert reads == [0, 1, 2, 3]  # four cached batches shared by every probe
    assert report["verdict"] == "healthy"


def test_same_spec_gives_same_report(diagnose):
    torch.manual_seed(0)  # the CLI seeds before calling the build function
    first = diagnose(CASES["bad_init"].build())
    torch.manual_seed(0)
    second = diagnose(CASES["bad_init"].build())
    assert first == second
