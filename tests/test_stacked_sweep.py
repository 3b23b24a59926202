"""The stacked sweep (several rates in one vmapped pass) judges as the sequential sweep does, and says
why when it trains one rate at a time instead."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nandoctor.runner import open_context
from nandoctor.settings import Settings
from nandoctor.spec import validate
from nandoctor.sweep.grid import recommend, run_sweep, sweep_rates
from nandoctor.sweep.stacked_math import StackedUpdate
from tests.fixtures import dynamics
from tests.zoo import torch_models


def _sweep(build, mode: str, **extra):
    torch.manual_seed(0)
    setup = validate(build(), "test")
    settings = Settings(sweep_stacked=mode, sweep_steps=16, **extra)
    with open_context(setup, settings) as ctx:
        before = {k: v.clone() for k, v in setup.model.state_dict().items()}
        sweep = run_sweep(ctx, sweep_rates(setup, settings), 16, setup.grad_clip, center=setup.lr)
        after = setup.model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)  # the model is left as it was
        best, _ = recommend(sweep, settings)
    return sweep, best


def _same_judgement(build, **extra):
    sequential, best_sequential = _sweep(build, "off", **extra)
    stacked, best_stacked = _sweep(build, "on", **extra)
    assert stacked.plan["stacked"]["passes"], stacked.plan["stacked"]
    assert sequential.plan["stacked"]["sequential_because"] == "sweep_stacked is off"
    assert [r.lr for r in stacked.runs] == [r.lr for r in sequential.runs]
    for one, other in zip(sequential.runs, stacked.runs):
        assert (one.lr, one.verdict, len(one.losses)) == (other.lr, other.verdict, len(other.losses))
        for steps, held in one.heldout.items():
            if math.isfinite(held):
                assert other.heldout[steps] == pytest.approx(held, rel=1e-3, abs=1e-5)
    assert (best_sequential and best_sequential.lr) == (best_stacked and best_stacked.lr)
    return stacked


@pytest.mark.parametrize(
    "build",
    [
        dynamics.adamw_diverges,
        dynamics.sgd_too_low,
        dynamics.clip_strangles,
        dynamics.adamw_collapses,
        dynamics.shuffled_labels,
    ],
    ids=lambda b: b.__name__,
)
def test_stacked_verdicts_equal_the_sequential_sweep_on_dynamics_fixtures(build):
    _same_judgement(build)


@pytest.mark.parametrize("fault", [None, "lr_too_high", "lr_too_low"])
def test_stacked_verdicts_equal_the_sequential_sweep_on_zoo_mlp(fault):
    _same_judgement(lambda: torch_models.mlp(fault))


class DropoutNormNet(nn.Module):
    """Dropout (the same masks as the sequential runs) and batch norm (running statistics per slice)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 4))

    def forward(self, x):
        return self.net(x)


def test_dropout_and_batch_norm_train_stacked_as_in_sequence():
    def build():
        return {"model": DropoutNormNet(), "data": dynamics.blob_batches(), "loss": dynamics.ce, "lr": 1e-2}

    stacked = _same_judgement(build)
    sequential, _ = _sweep(build, "off")
    for one, other in zip(sequential.runs, stacked.runs):  # the same dropout masks: the same losses
        assert other.losses == pytest.approx(one.losses, rel=1e-4, abs=1e-5)


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 4), nn.Linear(16, 4)

    def forward(self, x):
        h = self.a(x)
        return h if h.mean() > 0 else self.b(x)  # a branch on a weight-dependent value: vmap refuses it


def _blob_setup(model, **extra):
    return lambda: {"model": model, "data": dynamics.blob_batches(), "loss": dynamics.ce, "lr": 1e-2, **extra}


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (_blob_setup(Branchy()), "the stacked pass raised"),
        (_blob_setup(dynamics.Classifier(), optimizer=lambda ps, lr: torch.optim.RMSprop(ps, lr=lr)), "RMSprop"),
        (_blob_setup(dynamics.Classifier(), optimizer=lambda ps, lr: torch.optim.LBFGS(ps, lr=lr)), "LBFGS"),
    ],
    ids=["data_dependent_branch", "other_optimizer", "closure_optimizer"],
)
def test_what_cannot_stack_trains_in_sequence_and_says_why(build, reason):
    sweep, _ = _sweep(build, "on")
    summary = sweep.plan["stacked"]
    assert not summary["passes"] and reason in summary["sequential_because"]
    assert all(r.losses for r in sweep.runs)


def test_user_hooks_and_no_memory_to_spare_train_in_sequence():
    model = dynamics.Classifier()
    with model.logits.register_forward_hook(lambda *args: None):
        sweep, _ = _sweep(_blob_setup(model), "on")
    assert "hooks on logits" in sweep.plan["stacked"]["sequential_because"]
    sweep, _ = _sweep(_blob_setup(dynamics.Classifier()), "on", sweep_memory=0)
    assert "1 rates a pass" in sweep.plan["stacked"]["sequential_because"]


def _sgd(params, lr):
    return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-2)


@pytest.mark.parametrize(
    "make",
    [
        lambda ps, lr: torch.optim.AdamW(ps, lr=lr, weight_decay=0.1, amsgrad=True),
        lambda ps, lr: torch.optim.Adam(ps, lr=lr, weight_decay=1e-2, betas=(0.8, 0.9)),
        _sgd,
        lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=0.5, dampening=0.1, maximize=True),
    ],
    ids=["adamw_amsgrad", "adam_l2", "sgd_nesterov", "sgd_dampening_maximize"],
)
def test_stacked_update_is_torchs_update_for_each_slice(make):
    from nandoctor.sweep.stacked import optimizer_rule

    g = torch.Generator().manual_seed(0)
    rates = [1e-3, 3e-2, 0.3]
    weights = torch.randn(5, 3, generator=g)
    setup = validate({"model": nn.Linear(3, 5), "data": [torch.zeros(2, 3)], "optimizer": make}, "test")
    kind, groups, _ = optimizer_rule(setup, rates)
    update = StackedUpdate(kind, groups, [0])
    stacked = weights.unsqueeze(0).repeat(len(rates), 1, 1)
    copies = [weights.clone().requires_grad_() for _ in rates]
    optimizers = [make([c], rate) for c, rate in zip(copies, rates)]
    for _ in range(4):
        grads = torch.randn(len(rates), 5, 3, generator=g)
        update.apply([stacked], [grads.clone()])
        for copy, optimizer, grad in zip(copies, optimizers, grads):
            copy.grad = grad.clone()
            optimizer.step()
    for k, copy in enumerate(copies):
        assert torch.allclose(stacked[k], copy.detach(), rtol=1e-6, atol=1e-7)


def test_stacked_sweep_trains_faster_than_the_sequential_one_on_a_small_model():
    """Not a benchmark: a sanity check that the one-pass sweep is not slower on a tiny model."""
    import time

    def build():
        return {"model": dynamics.Classifier(), "data": dynamics.blob_batches(), "loss": dynamics.ce}

    _sweep(build, "on")  # warm-up of vmap's first call
    began = time.perf_counter()
    _sweep(build, "off")
    sequential = time.perf_counter() - began
    began = time.perf_counter()
    _sweep(build, "on")
    assert time.perf_counter() - began < sequential * 1.2


def test_the_one_pass_sweep_keeps_classes_of_the_loss_output():
    """A loss returning named components (summed with weights) trains stacked too."""

    def build():
        return {
            "model": dynamics.Classifier(),
            "data": dynamics.blob_batches(),
            "loss": lambda m, b: {"ce": F.cross_entropy(m(b["x"]), b["y"]), "l2": m(b["x"]).pow(2).mean()},
            "loss_weights": {"l2": 1e-3},
        }

    _same_judgement(build)
