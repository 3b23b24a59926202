"""A NaN that comes only after training: the op and the line at the step that failed, the cause and its trigger.

Three architectures whose fragile op breaks only once training has driven its input there (a
softmax or sigmoid that saturates to exactly 0 or 1, a predicted log-variance that runs away);
each report leads with the op at its line, folds ``lr_too_high`` under it as the trigger, and
verifies the stable form by re-running the same steps. Each has a healthy twin: the stable form
at a safe rate, free of these findings.
"""

import torch
from torch import nn
from torch.nn import functional as F

from nandoctor.render import render
from nandoctor.settings import Settings

# a short sweep that still reaches the failing step, so the rate finding is there to fold
FAST = Settings(sweep_steps=24, sweep_decades_down=1, sweep_decades_up=1, sweep_max_decades=1, guard_steps=30)
NAN_CODES = ("forward_nonfinite", "backward_nonfinite", "lr_too_high")


def _line(function, offset):
    return function.__code__.co_firstlineno + offset


# --- 1. a conv classifier with dropout, its log-softmax written by hand outside any module ---------


def images(count=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(4, 1, 8, 8, generator=g)
    batches = []
    for _ in range(count):
        labels = torch.randint(0, 4, (size,), generator=g)
        batches.append({"x": prototypes[labels] + 0.5 * torch.randn(size, 1, 8, 8, generator=g), "y": labels})
    return batches


def handwritten_log_softmax(model, batch):
    probs = torch.softmax(model(batch["x"]), dim=-1)
    return -torch.log(probs).gather(1, batch["y"][:, None]).mean()  # a non-target prob reaches 0: 0/0 in backward


def stable_log_softmax(model, batch):
    return F.cross_entropy(model(batch["x"]), batch["y"])


def conv_classifier(lr=0.2, stable=False):
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.5), nn.Linear(128, 4)
    )
    return {
        "model": model,
        "data": images(),
        "lr": lr,
        "loss": stable_log_softmax if stable else handwritten_log_softmax,
    }


# --- 2. full-batch logistic regression with a hand-written binary cross-entropy -------------------


def handwritten_bce(model, batch):
    p = torch.sigmoid(model(batch[0])).squeeze(-1)
    return -(batch[1] * torch.log(p) + (1 - batch[1]) * torch.log(1 - p)).mean()  # p reaches exactly 1


def stable_bce(model, batch):
    return F.binary_cross_entropy_with_logits(model(batch[0]).squeeze(-1), batch[1])


def logistic_regression(lr=0.3, stable=False):
    g = torch.Generator().manual_seed(1)
    x = 3 * torch.randn(64, 8, generator=g)
    y = (x @ torch.randn(8, generator=g) > 0).float()  # separable: the weights grow until p saturates
    return {"model": nn.Linear(8, 1), "data": [(x, y)], "lr": lr, "loss": stable_bce if stable else handwritten_bce}


# --- 3. a Gaussian NLL whose predicted log-variance runs away on noise-free samples ---------------


def gaussian_nll(model, batch):
    logvar = model(batch["x"]).squeeze(-1)
    return (0.5 * (logvar + batch["residual"] ** 2 * torch.exp(-logvar))).mean()  # exp overflows


def clamped_gaussian_nll(model, batch):
    logvar = model(batch["x"]).squeeze(-1).clamp(-20, 20)
    return (0.5 * (logvar + batch["residual"] ** 2 * torch.exp(-logvar))).mean()


def variance_regression(lr=0.1, stable=False):
    g = torch.Generator().manual_seed(3)
    batches = []
    for _ in range(4):
        x = torch.randn(32, 4, generator=g)
        exact = torch.rand(32, generator=g) < 0.5
        x[:, 0] = 3.0 * exact  # which sensor: one of them measures exactly, its residual is 0
        batches.append({"x": x, "residual": torch.randn(32, generator=g) * ~exact})
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    return {"model": model, "data": batches, "lr": lr, "loss": clamped_gaussian_nll if stable else gaussian_nll}


# --- the reports ---------------------------------------------------------------------------------


def _cause_leads(report, code, op, line):
    top = report["findings"][0]
    assert top["code"] == code and top["evidence"]["after_steps"] > 0, report["findings"]
    assert top["where"]["op"] == op and top["where"]["source"].endswith(f"test_nan_after_steps.py:{line}")
    assert top["evidence"]["kind"] == "unsafe op"
    assert "lr_too_high" in [e["code"] for e in top["evidence"].get("explains", [])]  # the trigger, folded
    assert "lr_too_high" not in [f["code"] for f in report["findings"]]
    assert "the rate is the trigger" in top["fix"]["advice"].lower()
    verified = top["fix"]["verified"]
    assert verified["ok"] and verified["before"] == top["evidence"]["after_steps"] and verified["after"] is None
    assert top["evidence"]["trigger"].startswith(f"at lr {report['probes']['steps']['lr']:.3g} ")
    for finding in report["findings"]:
        assert "module None" not in finding["title"] and "op None" not in finding["title"]
    assert "verified: ok" in render(report, "text")
    return top


def _healthy(report):
    assert report["probes"]["steps"]["nonfinite_step"] is None
    assert not [f for f in report["findings"] if f["code"] in NAN_CODES], report["findings"]


def test_conv_classifier_log_of_softmax_breaks_in_backward_after_training(diagnose):
    report = diagnose(conv_classifier(), settings=FAST)
    top = _cause_leads(report, "backward_nonfinite", "LogBackward0", _line(handwritten_log_softmax, 2))
    assert report["probes"]["forward"]["loss"] is not None  # step 0 is finite: only training finds it
    assert top["where"]["parameter"] == "5.bias"  # the parameter nearest the loss
    assert report["probes"]["steps"]["controls"]["stable_form"]["forms"] == ["log_softmax"]
    assert "log_softmax" in top["fix"]["advice"]


def test_conv_classifier_with_cross_entropy_at_a_safe_rate_is_healthy(diagnose):
    _healthy(diagnose(conv_classifier(lr=0.02, stable=True), settings=FAST))


def test_logistic_regression_log_of_sigmoid_breaks_in_forward_after_training(diagnose):
    report = diagnose(logistic_regression(), settings=FAST)
    top = _cause_leads(report, "forward_nonfinite", "aten::log", _line(handwritten_bce, 2))
    assert report["probes"]["steps"]["controls"]["stable_form"]["forms"] == ["logsigmoid"]
    assert "logsigmoid" in top["fix"]["advice"]


def test_logistic_regression_with_logits_at_a_safe_rate_is_healthy(diagnose):
    _healthy(diagnose(logistic_regression(lr=0.03, stable=True), settings=FAST))


def test_gaussian_nll_exp_of_log_variance_overflows_after_training(diagnose):
    report = diagnose(variance_regression(), settings=FAST)
    top = _cause_leads(report, "forward_nonfinite", "aten::exp", _line(gaussian_nll, 2))
    assert report["probes"]["steps"]["controls"]["stable_form"]["forms"] == ["exp_clamp"]
    assert "clamp" in top["fix"]["advice"]


def test_gaussian_nll_with_a_clamped_log_variance_at_a_safe_rate_is_healthy(diagnose):
    _healthy(diagnose(variance_regression(lr=0.01, stable=True), settings=FAST))
