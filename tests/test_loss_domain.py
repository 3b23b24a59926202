"""Losses that cannot be learned as written: bounded outputs against unreachable targets, a loss
climbed instead of descended, the task's own term weighted 0, a target whose scale drives training.
The fixture table (tests/fixtures/loss_domain.py) checks each case and twin; these check the edges."""

import torch
from torch import nn
from torch.nn import functional as F

from nandoctor.measure.targets import bounded_activation


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_a_bounded_output_is_read_through_reshapes_and_not_through_arithmetic():
    x = torch.randn(4, 3, requires_grad=True)
    assert bounded_activation(torch.sigmoid(x).view(-1)) == ("sigmoid", 0.0, 1.0)
    assert bounded_activation(torch.tanh(x)[:, :1].squeeze(-1)) == ("tanh", -1.0, 1.0)
    assert bounded_activation(100 * torch.sigmoid(x)) is None  # scaled: its range is the user's business
    assert bounded_activation(torch.sigmoid(x.detach())) is None  # no graph, nothing to read


class Regressor(nn.Module):
    def __init__(self, out_scale=1.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 32), nn.Tanh(), nn.Linear(32, 1))
        self.out_scale = out_scale

    def forward(self, x):
        return self.out_scale * self.net(x).squeeze(-1)


def _prices(scale, seed=31):
    g = _gen(seed)
    w = torch.randn(5, generator=g)
    batches = []
    for _ in range(4):
        x = torch.randn(64, 5, generator=g)
        batches.append((x, scale * (x @ w / 3 + 0.1 * torch.randn(64, generator=g))))
    return batches


def _mse(model, batch):
    return F.mse_loss(model(batch[0]), batch[1])


def test_a_negated_regression_loss_is_climbed_too(diagnose):
    report = diagnose({"model": Regressor(), "data": _prices(1.0), "loss": lambda m, b: -_mse(m, b)})
    assert report["findings"][0]["code"] == "loss_maximized", report["findings"]
    assert report["findings"][0]["evidence"]["d_total_d_loss"] < 0


def test_a_target_far_from_unit_scale_is_the_cause_when_its_control_says_so(diagnose):
    report = diagnose({"model": Regressor(), "data": _prices(5e4), "loss": _mse})
    top = report["findings"][0]
    assert top["code"] == "unnormalized_input" and top["severity"] != "info", report["findings"]
    control = top["evidence"]["standardized_control"]
    assert control["ratio"] >= 10 and "Control:" in top["fix"]["advice"]


def test_a_model_that_scales_its_own_output_keeps_the_target_scale_a_note(diagnose):
    # the head multiplies by the target's scale: the gradient does not shrink with the target standardized
    report = diagnose({"model": Regressor(out_scale=5e4), "data": _prices(5e4), "loss": _mse, "lr": 1e-4})
    notes = [f for f in report["findings"] if f["code"] == "unnormalized_input"]
    assert all(f["severity"] == "info" and "explains" not in f["evidence"] for f in notes), report["findings"]
    assert all(f["evidence"]["standardized_control"]["ratio"] < 10 for f in notes)


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, x, y):
        logits = self.net(x)
        with torch.no_grad():
            accuracy = (logits.argmax(-1) == y).float().mean()
        return {"ce": F.cross_entropy(logits, y), "accuracy": accuracy}


def test_a_metric_weighted_zero_without_a_gradient_is_not_a_component_to_restore(diagnose):
    g = _gen(32)
    batches = []
    for _ in range(3):
        x = torch.randn(48, 8, generator=g)
        batches.append((x, (x[:, 0] > 0).long()))
    report = diagnose(
        {
            "model": Tagger(),
            "data": batches,
            "loss": lambda m, b: m(*b),
            "loss_weights": {"ce": 1.0, "accuracy": 0.0},
            "lr": 1e-2,
        }
    )
    assert not [f for f in report["findings"] if f["code"] == "loss_component_unweighted"], report["findings"]


def test_a_loss_weight_fix_is_re_run_and_says_whether_it_helped(diagnose):
    from tests.fixtures.loss_domain import autoencoder_reconstruction_weighted_zero

    report = diagnose(autoencoder_reconstruction_weighted_zero())
    top = report["findings"][0]
    verified = top["fix"]["verified"]
    assert top["fix"]["config"] == {"loss_weights.reconstruction": 1.0}
    assert verified["ok"] and verified["after"] < verified["before"] and verified["steps"] > 0


def test_a_precision_fix_is_re_run_in_bf16(diagnose):
    from tests.fixtures.losses import logits_fp16

    top = diagnose(logits_fp16())["findings"][0]
    verified = top["fix"]["verified"]
    assert top["code"] == "amp_overflow" and top["evidence"]["rerun_fix"] == {"amp": "bf16"}
    assert verified["before"] is None and verified["after"] is not None and verified["ok"]  # fp16 overflows


def test_a_fix_whose_re_run_raises_in_the_users_code_stays_unverified_and_the_run_completes():
    from tests.fixtures.losses import DualEncoder, logits_fp16
    from tests.zoo.run import diagnose  # as the CLI runs: not in debug mode

    class NoBf16(DualEncoder):  # a model with an op its author never ran in bf16
        def forward(self, batch):
            if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16:
                raise RuntimeError("no bf16 kernel for this op")
            return super().forward(batch)

    setup = logits_fp16()
    setup["model"] = NoBf16(normalize=False)
    report = diagnose(setup)
    top = report["findings"][0]
    assert top["code"] == "amp_overflow" and "verified" not in top["fix"], top["fix"]
    assert not report["coverage"]["probes_not_run"]
