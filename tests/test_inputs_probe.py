"""The diagnose input probe: per-feature scale, NaN, ids against embedding sizes, roles."""

import torch
from torch import nn

from nandoctor.probes.inputs import feature_names_for
from tests.fixtures.models import CASES


def test_feature_names_list_and_mapping():
    assert feature_names_for("pulses", 2, {"pulses": ["t", "q"]}) == ["t", "q"]
    assert feature_names_for("0", 2, {0: ["t", "q"]}) == ["t", "q"]
    assert feature_names_for("batch", 2, ["t", "q"]) == ["t", "q"]
    assert feature_names_for("x", 3, ["t", "q"]) is None


def test_raw_pulses_name_time_and_list_every_flagged_feature(diagnose):
    finding = diagnose(CASES["raw_pulses"].build())["findings"][0]
    assert finding["code"] == "unnormalized_input" and finding["severity"] == "critical"
    features = finding["evidence"]["features"]
    assert {"time", "sensor_id"} <= set(features) and "auxiliary" not in features
    assert finding["evidence"]["mean"] > 5000 and "mean" in finding["fix"]["advice"]


def test_raw_inputs_rank_above_the_nan_they_cause(diagnose):
    codes = [f["code"] for f in diagnose(CASES["raw_pulses"].build())["findings"]]
    assert codes[0] == "unnormalized_input" and len(codes) >= 2


def test_regression_target_is_named_as_target_and_owns_the_gradients_it_drives(diagnose):
    report = diagnose(CASES["target_scale"].build())
    finding = next(f for f in report["findings"] if f["code"] == "unnormalized_input")
    assert finding["evidence"]["role"] == "target" and finding["title"].startswith("target")
    # its control: standardized, the first step's gradient is far smaller, so it explains them
    assert finding["evidence"]["standardized_control"]["ratio"] >= 10
    assert "exploding_gradients" in {e["code"] for e in finding["evidence"]["explains"]}
    assert finding["severity"] != "info"


def test_embedding_checked_before_forward_names_tensor_and_module(diagnose):
    report = diagnose(CASES["sensor_vocab"].build())
    found = [f for f in report["findings"] if f["code"] == "index_out_of_range"]
    assert len(found) == 1  # input probe and trace agree: reported once
    where = {k: v for k, v in found[0]["where"].items() if v is not None}
    assert where == {"module": "embeddings.sensor", "feature": "0", "batch": 0}


def test_labels_beyond_a_small_embedding_are_not_ids(diagnose):
    class Segments(nn.Module):
        def __init__(self):
            super().__init__()
            self.segment = nn.Embedding(2, 8)
            self.head = nn.Linear(8, 10)

        def forward(self, batch):
            return self.head(self.segment(batch["segment"]).mean(1))

    g = torch.Generator().manual_seed(0)
    data = [{"segment": torch.randint(0, 2, (4, 6), generator=g), "labels": torch.randint(0, 10, (4,), generator=g)}]
    report = diagnose(
        {"model": Segments(), "data": data, "loss": lambda m, b: nn.functional.cross_entropy(m(b), b["labels"])}
    )
    assert report["verdict"] == "healthy", report["findings"]


def test_binary_and_standardized_features_pass(diagnose):
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(64, 3, generator=g), (torch.rand(64, 1, generator=g) > 0.5).float()], -1)
    report = diagnose(
        {
            "model": nn.Linear(4, 1),
            "data": [(x, torch.randn(64, 1, generator=g))],
            "loss": lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]),
        }
    )
    assert report["verdict"] == "healthy", report["findings"]


def test_raw_inputs_explain_the_huge_gradients_they_cause(diagnose):
    """Income in dollars fed raw to a regressor: the gradient blow-up is folded under the input."""
    from torch import nn
    from torch.nn import functional as F

    g = torch.Generator().manual_seed(3)
    rows = [
        torch.stack([torch.randn(64, generator=g), 20_000 + 80_000 * torch.rand(64, generator=g)], 1) for _ in range(4)
    ]
    data = [(x, x[:, :1] + (x[:, 1:] - 60_000) / 40_000) for x in rows]
    model = nn.Sequential(nn.Linear(2, 32), nn.LeakyReLU(0.1), nn.Linear(32, 1))
    report = diagnose(
        {
            "model": model,
            "data": data,
            "loss": lambda m, b: F.mse_loss(m(b[0]), b[1]),
            "feature_names": ["age", "income"],
        }
    )
    top = report["findings"][0]
    assert (top["code"], top["where"]["feature"]) == ("unnormalized_input", "income")
    assert "exploding_gradients" in {e["code"] for e in top["evidence"].get("explains", [])}
    assert "exploding_gradients" not in [f["code"] for f in report["findings"]]
