"""Calibrated detectors: each one's evidence, and false-positive twins built from other architectures."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tests.fixtures.detectors import DETECTOR_CASES, TinyConvNet, _image_batches


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _codes(report):
    return [(f["code"], f["severity"], f["title"]) for f in report["findings"]]


# --- vanishing gradients by depth --------------------------------------------------------------


def test_sigmoid_stack_names_the_fading_layer_and_the_orders_of_magnitude(diagnose):
    finding = diagnose(DETECTOR_CASES["sigmoid_stack"].build())["findings"][0]
    evidence = finding["evidence"]
    assert finding["code"] == "vanishing_gradients" and finding["severity"] == "critical"
    assert evidence["first_layer"] == "layers.0.0" and evidence["first_layer_ratio"] < 1e-10
    assert finding["where"]["module"] == evidence["layer"] and evidence["layer"].startswith("layers.")


class ResidualReLU(nn.Module):
    def __init__(self, depth=16, width=32):
        super().__init__()
        self.stem = nn.Linear(8, width)
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
                for _ in range(depth)
            ]
        )
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


@pytest.mark.parametrize("model", ["residual", "plain_relu"])
def test_deep_relu_nets_with_normal_init_have_no_fading_gradient(diagnose, model):
    net = (
        ResidualReLU()
        if model == "residual"
        else nn.Sequential(
            *[layer for i in range(12) for layer in (nn.Linear(8 if i == 0 else 32, 32), nn.ReLU())], nn.Linear(32, 1)
        )
    )
    g = _gen(1)
    x = torch.randn(64, 8, generator=g)
    data = [(x, x[:, :1] * 2 - x[:, 1:2])]
    report = diagnose({"model": net, "data": data, "loss": lambda m, b: F.mse_loss(m(b[0]), b[1])})
    assert "vanishing_gradients" not in [f["code"] for f in report["findings"]], _codes(report)


# --- a secondary loss component carrying most of the gradient ------------------------------------


def test_secondary_component_share_is_in_the_evidence(diagnose):
    finding = diagnose(DETECTOR_CASES["sparsity_dominates"].build())["findings"][0]
    assert 10 < finding["evidence"]["ratio"] < 100  # below the old fixed 100x line
    assert finding["evidence"]["share"] > 0.9 and finding["evidence"]["weighted_below_another"]


class GruRegressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(4, 16, batch_first=True)
        self.head = nn.Linear(16, 1)

    def forward(self, batch):
        out, _ = self.rnn(batch["x"])
        prediction = self.head(out[:, -1])
        weight_decay = sum(p.pow(2).sum() for p in self.parameters())
        return {"mse": F.mse_loss(prediction, batch["y"] * 30), "l2": weight_decay}


def test_main_loss_dwarfing_a_light_regularizer_is_fine(diagnose):
    g = _gen(2)
    data = [{"x": torch.randn(16, 6, 4, generator=g), "y": torch.randn(16, 1, generator=g)} for _ in range(2)]
    report = diagnose({"model": GruRegressor(), "data": data, "loss_weights": {"mse": 1.0, "l2": 1e-4}})
    components = report["probes"]["components"]["components"]
    assert components["mse"]["share"] > 0.9  # the main loss carries nearly all of the gradient
    assert "loss_component_explosion" not in [f["code"] for f in report["findings"]], _codes(report)


# --- saturation only where gradient is blocked ----------------------------------------------------


class Gate(nn.Module):
    """Zero-initialized logits: sigmoid(0) = 0.5 everywhere, and the gradient flows."""

    def __init__(self, functional: bool):
        super().__init__()
        self.logits = nn.Linear(16, 16)
        nn.init.zeros_(self.logits.weight)
        nn.init.zeros_(self.logits.bias)
        self.squash = None if functional else nn.Sigmoid()

    def forward(self, h):
        logits = self.logits(h)
        return torch.sigmoid(logits) if self.squash is None else self.squash(logits)


class GatedPool(nn.Module):
    def __init__(self, functional: bool):
        super().__init__()
        self.encoder = nn.Conv1d(4, 16, 3, padding=1)
        self.gate = Gate(functional)
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        h = self.encoder(x).mean(-1)
        return self.head(h * self.gate(h))


@pytest.mark.parametrize("functional", [True, False])
def test_sigmoid_of_zero_logits_is_not_saturation(diagnose, functional):
    g = _gen(3)
    data = []
    for _ in range(2):
        x = torch.randn(16, 4, 10, generator=g)
        data.append((x, (x[:, 0].mean(-1) > 0).long()))
    report = diagnose(
        {"model": GatedPool(functional), "data": data, "loss": lambda m, b: F.cross_entropy(m(b[0]), b[1])}
    )
    assert "saturation" not in [f["code"] for f in report["findings"]], _codes(report)
    rows = {r["module"]: r for r in report["probes"]["saturation"]["modules"]}
    if functional:  # equal values everywhere, but the gradient control shows it passes
        assert rows["gate"]["share"] == 1.0 and rows["gate"]["gradient_passed"] > 0.1
    else:  # sigmoid(0) sits at the peak of its derivative
        assert rows["gate.squash"]["share"] == 0.0


class PaddingMask(nn.Module):
    def forward(self, ids):
        return (ids != 0).float()


class MaskedBag(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(30, 16, padding_idx=0)
        self.mask = PaddingMask()
        self.head = nn.Linear(16, 2)

    def forward(self, ids):
        mask = self.mask(ids)
        pooled = (self.embed(ids) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
        return self.head(pooled)


def test_a_padding_mask_is_not_pinned(diagnose):
    g = _gen(4)
    data = []
    for _ in range(2):
        ids = torch.randint(1, 30, (16, 12), generator=g)
        ids[:, 8:] = 0  # most positions padded: the mask is mostly 0 and 1
        data.append((ids, (ids[:, 0] > 15).long()))
    report = diagnose({"model": MaskedBag(), "data": data, "loss": lambda m, b: F.cross_entropy(m(b[0]), b[1])})
    assert "saturation" not in [f["code"] for f in report["findings"]], _codes(report)


def test_clamped_critic_blocks_the_gradient(diagnose):
    from tests.fixtures.losses import LOSS_CASES

    finding = diagnose(LOSS_CASES["critic_clamp"].build())["findings"][0]
    assert finding["code"] == "saturation" and finding["evidence"]["gradient_passed"] == 0.0


# --- input scale where a feature is first consumed --------------------------------------------


def test_model_that_standardizes_with_buffers_in_forward_is_fine(diagnose):
    from tests.fixtures.models import FEATURES, PulseTransformer, _pulse_loss, _pulse_table_batches

    report = diagnose(
        {
            "model": PulseTransformer(normalize=True),
            "data": _pulse_table_batches(False),
            "loss": _pulse_loss,
            "feature_names": FEATURES,
        }
    )
    assert "unnormalized_input" not in [f["code"] for f in report["findings"]], _codes(report)
    assert report["probes"]["inputs"]["consumed_by"]["pulses"]["module"] == "embed"


def test_batchnorm_on_raw_features_is_fine(diagnose):
    g = _gen(5)
    data = []
    for _ in range(2):
        x = torch.cat([1000 + 300 * torch.randn(64, 2, generator=g), torch.randn(64, 2, generator=g)], -1)
        data.append((x, ((x[:, 0] - 1000) / 300 + x[:, 2]).unsqueeze(-1)))
    model = nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    report = diagnose({"model": model, "data": data, "loss": lambda m, b: F.mse_loss(m(b[0]), b[1])})
    assert "unnormalized_input" not in [f["code"] for f in report["findings"]], _codes(report)


def test_raw_features_reshaped_before_the_first_layer_are_inputs(diagnose):
    g = _gen(6)
    data = [(5000 + 70000 * torch.rand(16, 10, 2, generator=g), torch.randn(16, 1, generator=g)) for _ in range(2)]
    model = nn.Sequential(nn.Flatten(), nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 1))
    report = diagnose({"model": model, "data": data, "loss": lambda m, b: F.mse_loss(m(b[0].reshape(16, 20)), b[1])})
    top = report["findings"][0]
    assert top["code"] == "unnormalized_input" and top["severity"] == "critical", _codes(report)
    assert top["evidence"]["role"] == "input" and top["evidence"]["first_consumed_by"] == "1"


def test_image_batches_are_judged_per_channel(diagnose):
    report = diagnose(
        {"model": TinyConvNet(False), "data": _image_batches(), "loss": lambda m, b: F.cross_entropy(m(b[0]), b[1])}
    )
    assert set(report["probes"]["inputs"]["features"]) == {"0[0]", "0[1]", "0[2]"}


# --- a causal mask is not a broken init; NaN always is ----------------------------------------


def test_infinite_buffer_that_makes_the_forward_nonfinite_is_still_reported(diagnose):
    class Offset(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("offset", torch.tensor([0.0, float("-inf"), 0.0]))
            self.body = nn.Linear(3, 3)

        def forward(self, x):
            return self.body(x + self.offset)

    data = [(torch.randn(8, 3, generator=_gen(7)), torch.randn(8, 3, generator=_gen(8)))]
    report = diagnose({"model": Offset(), "data": data, "loss": lambda m, b: F.mse_loss(m(b[0]), b[1])})
    assert report["findings"][0]["code"] == "nonfinite_init", _codes(report)


# --- class labels against the loss's classes ------------------------------------------------------


def _classifier_setup(labels, ignore_index=-100, loss="cross_entropy"):
    g = _gen(9)
    x = torch.randn(len(labels), 6, generator=g)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    if loss == "cross_entropy":
        fn = lambda m, b: F.cross_entropy(m(b[0]), b[1], ignore_index=ignore_index)  # noqa: E731
    elif loss == "keywords":
        fn = lambda m, b: F.cross_entropy(input=m(b[0]), target=b[1], ignore_index=ignore_index)  # noqa: E731
    else:
        fn = lambda m, b: F.nll_loss(F.log_softmax(m(b[0]), -1), b[1])  # noqa: E731
    return {"model": model, "data": [(x, torch.tensor(labels))], "loss": fn}


def test_negative_labels_are_out_of_range(diagnose):
    report = diagnose(_classifier_setup([0, 1, -1, 3, 2, 1, 0, 3]))
    top = report["findings"][0]
    assert top["code"] == "label_out_of_range" and top["where"]["sample"] == 2
    assert top["evidence"]["range"] == [-1, 3] and top["evidence"]["out_of_range"] == 1
    assert [e["code"] for e in top["evidence"].get("explains", [])] == ["forward_error"]


def test_nll_loss_labels_at_the_class_count(diagnose):
    top = diagnose(_classifier_setup([0, 4, 1, 2], loss="nll"))["findings"][0]
    assert top["code"] == "label_out_of_range" and top["evidence"]["classes"] == 4


def test_keyword_cross_entropy_labels_at_the_class_count(diagnose):
    report = diagnose(_classifier_setup([0, 1, 2, 3, 4, 1, 0, 3], loss="keywords"))
    top = report["findings"][0]
    assert top["code"] == "label_out_of_range" and top["where"]["sample"] == 4, _codes(report)
    assert top["evidence"]["classes"] == 4 and top["evidence"]["range"] == [0, 4]


def test_keyword_cross_entropy_labels_in_range_are_not_out_of_range(diagnose):
    report = diagnose(_classifier_setup([0, 1, 2, 3, 2, 1, 0, 3], loss="keywords"))
    assert "label_out_of_range" not in [f["code"] for f in report["findings"]], _codes(report)
    report = diagnose(_classifier_setup([0, 1, 7, 3], ignore_index=7, loss="keywords"))
    assert "label_out_of_range" not in [f["code"] for f in report["findings"]], _codes(report)


def test_a_loss_call_reads_the_same_positional_or_keyword():
    from nandoctor.measure.labels import loss_targets

    logits, labels = torch.randn(4, 3), torch.tensor([0, 5, 2, 7])
    for args, kwargs in [
        ((logits, labels, None, None, 7), {}),
        ((), {"input": logits, "target": labels, "ignore_index": 7}),
    ]:
        targets = loss_targets(F.cross_entropy, args, kwargs)
        assert (targets.loss, targets.classes, targets.ignore_index) == ("cross_entropy", 3, 7)
        assert targets.outside(targets.target).tolist() == [False, True, False, False]
    assert loss_targets(F.cross_entropy, (logits, torch.rand(4, 3)), {}) is None  # class probabilities


def test_ignore_index_is_not_out_of_range(diagnose):
    labels = [0, 1, -100, 3, 2, 1, -100, 3, 0, 2, 1, 3, 0, 1, 2, 3]
    report = diagnose(_classifier_setup(labels))
    assert "label_out_of_range" not in [f["code"] for f in report["findings"]], _codes(report)
    report = diagnose(_classifier_setup([0, 1, 7, 3], ignore_index=7))
    assert "label_out_of_range" not in [f["code"] for f in report["findings"]], _codes(report)


def test_bert_labels_beyond_num_labels():
    transformers = pytest.importorskip("transformers")
    from tests.conftest import diagnose_setup

    config = transformers.BertConfig(
        vocab_size=60,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=3,
    )
    model = transformers.BertForSequenceClassification(config)
    g = _gen(10)
    data = [
        {
            "input_ids": torch.randint(1, 60, (8, 10), generator=g),
            "attention_mask": torch.ones(8, 10, dtype=torch.long),
            "labels": torch.tensor([0, 1, 2, 1, 5, 0, 2, 1]),
        }
    ]
    report = diagnose_setup({"model": model, "data": data, "loss": lambda m, b: m(**b)})
    top = report["findings"][0]
    assert top["code"] == "label_out_of_range", _codes(report)
    assert top["where"]["feature"] == "labels" and top["where"]["sample"] == 4
    assert "site-packages" not in top["fix"]["advice"]


# --- ids are what reaches an embedding -------------------------------------------------------


def test_class_labels_beside_a_two_row_embedding_are_not_its_ids(diagnose):
    class Segments(nn.Module):
        def __init__(self):
            super().__init__()
            self.segment = nn.Embedding(2, 8)
            self.head = nn.Linear(8, 10)

        def forward(self, segments):
            return self.head(self.segment(segments).mean(1))

    g = _gen(11)
    data = []
    for _ in range(2):
        segments = torch.randint(0, 2, (32, 6), generator=g)
        data.append((segments, segments.sum(1) + 2))  # labels 2..8: 0..9 would be out of an Embedding(2)
    report = diagnose({"model": Segments(), "data": data, "loss": lambda m, b: F.cross_entropy(m(b[0]), b[1])})
    assert "index_out_of_range" not in [f["code"] for f in report["findings"]], _codes(report)
