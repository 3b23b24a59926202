"""Loss components, mixed precision, saturation and dead units: bad setups and repaired twins."""

import torch
from torch import nn
from torch.nn import functional as F

from nandoctor.probes.components import component_gradients
from nandoctor.runner import open_context
from nandoctor.settings import Settings
from nandoctor.spec import validate
from tests.fixtures.losses import LOSS_CASES


def test_component_table_and_weight_fix_under_the_config_key(diagnose):
    finding = diagnose(LOSS_CASES["acyclicity"].build())["findings"][0]
    assert finding["evidence"]["ratio"] > 100
    assert set(finding["evidence"]["table"]) == {"reconstruction", "acyclic"}
    ((key, value),) = finding["fix"]["config"].items()
    assert key == "loss.lambda_acyclic" and 0 < value < 0.1


def test_suggested_weight_brings_the_component_in_line(diagnose):
    finding = diagnose(LOSS_CASES["acyclicity"].build())["findings"][0]
    weight = finding["fix"]["config"]["loss.lambda_acyclic"]
    torch.manual_seed(0)
    setup = validate(LOSS_CASES["acyclicity"].build(lambda_acyclic=weight), "fixed")
    with open_context(setup, Settings()) as ctx:
        rows = component_gradients(ctx, ctx.batches[0])
    ratio = rows["acyclic"]["grad_norm"] / rows["reconstruction"]["grad_norm"]
    assert 0.05 < ratio < 20


def test_zero_norm_component_is_named_and_the_others_are_finite(diagnose):
    finding = diagnose(LOSS_CASES["contrastive_zero_norm"].build())["findings"][0]
    assert finding["evidence"]["in"] == "value"
    assert all(v == v for v in finding["evidence"]["others"].values())  # mse and dist stay finite


def test_amp_overflow_evidence_and_bf16_fix(diagnose):
    finding = diagnose(LOSS_CASES["logits_fp16"].build())["findings"][0]
    assert finding["evidence"]["float32_absmax"] > 65504 and finding["evidence"]["dtype_limit"] == 65504
    assert finding["fix"]["config"] == {"trainer.precision": "bf16"}


def test_amp_what_if_for_a_float32_spec_is_info(diagnose):
    built = LOSS_CASES["logits_fp16"].build()
    built["amp"] = None
    report = diagnose(built, settings=Settings(amp_what_if="fp16"))
    amp = [f for f in report["findings"] if f["code"] == "amp_overflow"]
    assert amp and amp[0]["severity"] == "info" and amp[0]["title"].startswith("(what-if fp16)")


def test_clamp_saturation_reports_the_bound(diagnose):
    finding = diagnose(LOSS_CASES["critic_clamp"].build())["findings"][0]
    assert abs(finding["evidence"]["bound"]) == 1000.0 and finding["evidence"]["share"] >= 0.5


def test_tanh_tails_are_saturation(diagnose):
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    nn.init.normal_(model[0].weight, std=20.0)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(32, 8, generator=g), torch.randn(32, 1, generator=g)) for _ in range(2)]
    report = diagnose({"model": model, "data": data, "loss": lambda m, b: F.mse_loss(m(b[0]), b[1])})
    finding = next(f for f in report["findings"] if f["code"] == "saturation")
    assert finding["where"]["module"] == "1" and finding["evidence"]["kind"] == "tanh/sigmoid tails"


def test_dead_units_counts_channels_of_conv_maps(diagnose):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    nn.init.constant_(model[0].bias, -10.0)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 3, 6, 6, generator=g), torch.randint(0, 2, (8,), generator=g)) for _ in range(3)]
    report = diagnose({"model": model, "data": data, "loss": lambda m, b: F.cross_entropy(m(b[0]), b[1])})
    dead = next(f for f in report["findings"] if f["code"] == "dead_units")
    assert dead["evidence"]["units"] == 8 and dead["where"]["module"] == "1"
