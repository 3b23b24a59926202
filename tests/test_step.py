"""The one training step (nandoctor/step.py) shared by the sweep, the steps probe and replay, on real tiny models."""

import math
from functools import partial

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nandoctor.errors import UsageError
from nandoctor.probes.steps import train_steps
from nandoctor.runner import open_context
from nandoctor.settings import Settings
from nandoctor.spec import validate
from nandoctor.step import StepFailure, StepLog, StepRaised, TrainingStep, needs_closure, run_steps, score
from nandoctor.sweep.grid import run_sweep
from nandoctor.sweep.stream import BatchStream
from nandoctor.sweep.training import train


def regression_data(count=4, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    weights = torch.randn(6, 1, generator=g)
    batches = []
    for _ in range(count):
        x = torch.randn(size, 6, generator=g)
        batches.append((x, x @ weights + 0.1 * torch.randn(size, 1, generator=g)))
    return batches


def mse(model, batch):
    return F.mse_loss(model(batch[0]), batch[1])


def setup_of(model, loss=mse, **extra):
    torch.manual_seed(0)
    return validate({"model": model, "data": regression_data(), "loss": loss, **extra}, "test")


def scaled_run(skip_limit, steps=30):
    """A real GradScaler (on the CPU) whose first scale, 2**127, overflows the gradients of a loss x1000."""
    setup = setup_of(nn.Linear(6, 1), loss=lambda m, b: 1000 * mse(m, b))
    before = setup.model.weight.detach().clone()
    optimizer = torch.optim.SGD(setup.model.parameters(), lr=1e-5)
    trainer = TrainingStep(setup, optimizer, None, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**127))
    assert trainer.run(0, [setup.data[0]]) is None and torch.equal(setup.model.weight, before)  # skipped
    log = StepLog()
    ((loss, norm),) = values = trainer.read()
    assert math.isfinite(loss) and not math.isfinite(norm)
    log.add_all(values, trainer.scaled, skip_limit)
    run_steps(
        trainer,
        log,
        steps,
        lambda step: setup.data[step % 4],
        lambda read: log.add_all(read, trainer.scaled, skip_limit),
    )
    return log


def test_gradscaler_skips_while_it_calibrates_and_ends_the_run_past_the_limit():
    """Skipped steps leave the weights alone; more than the limit skipped in a row ends the run as non-finite."""
    short = scaled_run(skip_limit=2)
    assert short.nonfinite_step == 2 and short.skipped_steps == 3  # the third in a row
    calibrated = scaled_run(skip_limit=50)
    assert calibrated.nonfinite_step is None and 3 <= calibrated.skipped_steps < 30
    assert math.isfinite(calibrated.grad_norms[-1]) and calibrated.losses[-1] < calibrated.losses[0]


def test_skip_bookkeeping_on_plain_numbers():
    inf = float("inf")
    log = StepLog()
    assert not log.add_all([[1.0, inf], [1.0, inf], [1.0, 0.5]], True, 2)
    assert log.add_all([[1.0, inf], [1.0, inf], [1.0, inf], [1.0, 0.5]], True, 2)
    assert log.nonfinite_step == 5 and log.skipped_steps == 5 and len(log.losses) == 6
    unscaled = StepLog()
    assert unscaled.add(1.0, inf, False, 2) and unscaled.nonfinite_step == 0
    nan_loss = StepLog()
    assert nan_loss.add(float("nan"), inf, True, 2) and nan_loss.skipped_steps == 0  # a NaN loss is never skipped


class RaisesOnItsFourthStep(nn.Module):
    """Raises in the user's forward on the fourth training step (scoring runs with dropout off: not counted)."""

    def __init__(self):
        super().__init__()
        self.linear, self.dropout, self.calls = nn.Linear(6, 1), nn.Dropout(0.0), 0

    def forward(self, x):
        if self.dropout.training:
            self.calls += 1
            if self.calls == 4:
                raise ValueError("shapes drifted\nsecond line")
        return self.dropout(self.linear(x))


def test_a_raising_step_is_recorded_the_same_way_by_the_sweep_and_the_steps_probe():
    expected = StepFailure(3, "ValueError: shapes drifted")
    settings = Settings()
    model = RaisesOnItsFourthStep()
    setup = setup_of(model)
    with open_context(setup, settings) as ctx:
        run = train(ctx, BatchStream(ctx, 8), 1e-3, [8], None)
        assert run.failure == expected and run.cut == expected.text == "step 3 raised ValueError: shapes drifted"
        assert len(run.losses) == 3 and run.nonfinite_step is None

        model.calls = 0
        probe = train_steps(ctx, 8, math.inf)
        assert probe["stopped"] == expected.text and len(probe["losses"]) == 3 and probe["nonfinite_step"] is None

        model.calls = 0
        with pytest.raises(StepRaised) as raised:
            run_sweep(ctx, [1e-3], 8, None, extend=False)
        # the first rung trains 2 steps, the second starts again from the snapshot: its step 1 is the 4th forward
        assert raised.value.failure == StepFailure(1, expected.error) and isinstance(raised.value, UsageError)
        assert "a training step raised ValueError: shapes drifted" in str(raised.value)


def test_our_own_errors_propagate_out_of_the_step():
    setup = setup_of(nn.Linear(6, 1), loss=lambda m, b: None)  # the loss returns None: a UsageError of ours
    trainer = TrainingStep(setup, torch.optim.SGD(setup.model.parameters(), lr=0.1), None)
    with pytest.raises(UsageError, match="returned None"):
        trainer.run(0, [setup.data[0]])


def test_a_closure_optimizer_runs_through_the_step():
    setup = setup_of(nn.Linear(6, 1))
    optimizer = torch.optim.LBFGS(setup.model.parameters(), lr=0.5, max_iter=5)
    assert needs_closure(optimizer) and not needs_closure(torch.optim.AdamW(setup.model.parameters()))
    trainer = TrainingStep(setup, optimizer, 10.0)
    log = StepLog()
    run_steps(trainer, log, 4, lambda step: setup.data[0], lambda read: log.add_all(read, trainer.scaled, 2))
    assert log.stopped is None and len(log.losses) == 4
    assert all(math.isfinite(v) for v in log.losses + log.grad_norms)
    assert log.losses[-1] < 0.5 * log.losses[0]


def test_accumulated_micro_batches_give_the_gradient_of_one_big_batch():
    ((x, y),) = regression_data(count=1, size=16)
    halves, whole = [(x[:8], y[:8]), (x[8:], y[8:])], [(x, y)]
    outcomes = []
    for micro, accumulate in ((halves, 2), (whole, 1)):
        torch.manual_seed(0)
        setup = setup_of(nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1)))
        trainer = TrainingStep(setup, torch.optim.SGD(setup.model.parameters(), lr=0.1), None)
        assert trainer.measure(0, micro) is None
        grads = [p.grad.clone() for p in setup.model.parameters()]
        log = StepLog()
        run_steps(
            trainer, log, 1, micro.__getitem__, partial(log.add_all, scaled=False, skip_limit=2), accumulate=accumulate
        )
        outcomes.append((grads, [p.detach().clone() for p in setup.model.parameters()], log.losses, log.grad_norms))
    (split, split_weights, split_loss, split_norm), (one, one_weights, one_loss, one_norm) = outcomes
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(split, one))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(split_weights, one_weights))  # the same update
    assert split_loss == pytest.approx(one_loss, rel=1e-5) and split_norm == pytest.approx(one_norm, rel=1e-5)


def gradient_penalty_loss(model, batch):
    """A WGAN-GP style loss: it takes the gradient of the output with respect to the input itself."""
    x = batch[0].clone().requires_grad_(True)
    out = model(x)
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    return out.mean() + ((grad.norm(dim=1) - 1) ** 2).mean()


def test_scoring_runs_a_loss_that_takes_gradients_and_leaves_no_trace():
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 1))
    setup = setup_of(model, loss=gradient_penalty_loss)
    running = model[1].running_mean.clone()
    with torch.no_grad():  # even from inside no_grad
        loss, spread = score(setup, setup.data[:2])
    assert math.isfinite(loss) and spread is not None and spread > 0
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model[1].running_mean, running) and model[2].training
    again, _ = score(setup, setup.data[:2])
    assert again == loss  # dropout off: the same score twice
