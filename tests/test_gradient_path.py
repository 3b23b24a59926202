"""no_gradient_path, target_out_of_range and loss_shape_mismatch beyond the fixture table: the CLI
end to end on a user's file, and the setups that must stay quiet (zero-initialised output layers,
LoRA, unused modules, scalar targets)."""

import json
import subprocess
import sys
import textwrap

import torch
from torch import nn
from torch.nn import functional as F

from nandoctor.probes import PROBES

QUICK = [p for p in PROBES if p.cost.value == "passes"]

LEAF_LOSS_SPEC = """
import torch
from torch import nn
from torch.nn import functional as F


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        with torch.no_grad():  # "inference helper" left in the training path
            return self.body(x)


def loss(model, batch):
    x, y = batch
    value = F.cross_entropy(model(x), y)
    return value.requires_grad_()  # "fixes" the error backward() raised


def build():
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(3)]
    return {"model": Encoder(), "data": data, "loss": loss}
"""


def test_cli_names_the_no_grad_module_of_a_leaf_loss(tmp_path):
    spec = tmp_path / "leaf_loss.py"
    spec.write_text(textwrap.dedent(LEAF_LOSS_SPEC))
    result = subprocess.run(
        [sys.executable, "-m", "nandoctor", "diagnose", f"{spec}:build", "--format", "json", "--quick"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    top = report["findings"][0]
    assert top["code"] == "no_gradient_path" and top["severity"] == "critical"
    assert top["where"]["module"] == "body"
    line = textwrap.dedent(LEAF_LOSS_SPEC).splitlines().index("            return self.body(x)") + 1
    assert top["where"]["source"].endswith(f"leaf_loss.py:{line}")
    assert "torch.no_grad()" in top["fix"]["advice"]
    assert "vanishing_gradients" not in [f["code"] for f in report["findings"]]


class ZeroInitResidual(nn.Module):
    """A residual branch whose last layer starts at zero (ReZero / adaLN-zero): gone after one step."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.branch = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16))
        nn.init.zeros_(self.branch[2].weight)
        nn.init.zeros_(self.branch[2].bias)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        h = self.inp(x)
        return self.out(h + self.branch(h))


class LoRALinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.base = nn.Linear(6, 3).requires_grad_(False)
        self.lora_a = nn.Parameter(torch.randn(4, 6) * 0.1)
        self.lora_b = nn.Parameter(torch.zeros(3, 4))  # B starts at zero: A's gradient is zero at first
        self.unused_head = nn.Linear(3, 3)  # built, never called

    def forward(self, x):
        return self.base(x) + x @ self.lora_a.T @ self.lora_b.T


def _classes():
    g = torch.Generator().manual_seed(3)
    centers = torch.randn(3, 6, generator=g) * 2
    batches = []
    for _ in range(3):
        y = torch.randint(0, 3, (16,), generator=g)
        batches.append((centers[y] + 0.3 * torch.randn(16, 6, generator=g), y))
    return batches


def _codes(report):
    return {f["code"]: f for f in report["findings"]}


def test_zero_initialised_layers_that_move_after_one_step_are_not_a_cut(diagnose):
    for model in (ZeroInitResidual(), LoRALinear()):
        report = diagnose(
            {"model": model, "data": _classes(), "loss": lambda m, b: F.cross_entropy(m(b[0]), b[1])}, probes=QUICK
        )
        found = _codes(report).get("no_gradient_path")
        assert found is None or found["severity"] == "info", found
        assert report["verdict"] == "healthy", report["findings"]


def test_an_unused_module_is_info_and_named(diagnose):
    report = diagnose(
        {"model": LoRALinear(), "data": _classes(), "loss": lambda m, b: F.cross_entropy(m(b[0]), b[1])}, probes=QUICK
    )
    found = _codes(report)["no_gradient_path"]
    assert found["severity"] == "info" and found["where"]["module"] == "unused_head"


def test_scalar_and_per_feature_targets(diagnose):
    model = nn.Linear(4, 4)
    data = [torch.randn(8, 4) for _ in range(3)]
    scalar = diagnose(
        {"model": model, "data": data, "loss": lambda m, x: F.mse_loss(m(x), torch.tensor(0.0))}, probes=QUICK
    )
    assert "loss_shape_mismatch" not in _codes(scalar)
    per_feature = diagnose(
        {"model": model, "data": data, "loss": lambda m, x: F.mse_loss(m(x), x.mean(0))}, probes=QUICK
    )
    found = _codes(per_feature)["loss_shape_mismatch"]
    assert found["severity"] == "warning" and found["evidence"]["target_shape"] == [4]


def test_log_target_kl_and_integer_label_smoothing_stay_clean(diagnose):
    model = nn.Linear(6, 3)

    def loss(m, batch):
        x, y = batch
        logits = m(x)
        teacher = torch.log_softmax(torch.randn_like(logits), -1)  # log-probabilities: negative
        kl = F.kl_div(logits.log_softmax(-1), teacher, log_target=True, reduction="batchmean")
        return kl + F.cross_entropy(logits, y, label_smoothing=0.1)

    report = diagnose({"model": model, "data": _classes(), "loss": loss}, probes=QUICK)
    assert "target_out_of_range" not in _codes(report), report["findings"]


def test_a_zeroed_layer_before_a_relu_is_dead_units_with_the_specific_advice(diagnose):
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    nn.init.zeros_(model[0].weight)
    nn.init.zeros_(model[0].bias)
    report = diagnose(
        {"model": model, "data": _classes(), "loss": lambda m, b: F.cross_entropy(m(b[0]), b[1])}, probes=QUICK
    )
    top = report["findings"][0]
    assert top["code"] == "dead_units" and top["where"]["module"] == "1"
    assert "zero-initialised" in top["fix"]["advice"]
    assert "no_gradient_path" not in _codes(report)
