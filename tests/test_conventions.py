"""Calling conventions without any framework installed: dict batches, loss entries, optimizer rebuilds."""

import pytest
import torch
from torch import nn

from nandoctor.conventions import call_model, first_optimizer, optimizer_like, takes_batch_keywords, trainer_settings
from nandoctor.errors import UsageError
from nandoctor.loss import interpret_loss
from nandoctor.spec import validate


class Keywords(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 2)

    def forward(self, features, labels=None):
        logits = self.proj(features)
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


class WholeBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 1)

    def forward(self, batch):
        return (self.proj(batch["features"]).squeeze(-1) - batch["target"]).pow(2).mean()


class AnyKeywords(nn.Module):
    def forward(self, **inputs):
        return sum(v.float().sum() for v in inputs.values())


class BatchAndOptions(nn.Module):
    def forward(self, batch, **options):
        return batch["features"].sum()


def test_a_dict_batch_goes_by_keywords_only_when_the_forward_takes_those_names():
    batch = {"features": torch.randn(3, 4), "labels": torch.tensor([0, 1, 0])}
    assert takes_batch_keywords(Keywords(), batch)
    assert takes_batch_keywords(AnyKeywords(), batch)
    regression = {"features": torch.randn(3, 4), "target": torch.randn(3)}
    assert not takes_batch_keywords(WholeBatch(), regression)
    assert not takes_batch_keywords(BatchAndOptions(), regression)  # 'batch' would be missing
    assert not takes_batch_keywords(Keywords(), {"features": torch.randn(3, 4), "extra": 1})  # no such argument
    assert not takes_batch_keywords(Keywords(), (torch.randn(3, 4),))
    assert call_model(WholeBatch(), regression).shape == ()
    assert call_model(BatchAndOptions(), regression).shape == ()


def test_an_outputs_loss_is_the_loss_and_its_other_entries_are_not_components():
    loss, acc = torch.tensor(0.7, requires_grad=True), torch.tensor(93.0)
    result = interpret_loss({"loss": loss, "acc": acc}, {})  # Lightning's training_step
    assert result.total is not None and float(result.total.detach()) == pytest.approx(0.7) and result.components == {}
    result = interpret_loss(Keywords()(torch.randn(3, 4), torch.tensor([0, 1, 0])), {})
    assert result.components == {}
    parts = interpret_loss({"mse": torch.tensor(1.0), "kl": torch.tensor(2.0)}, {"kl": 0.5})
    assert float(parts.total) == pytest.approx(2.0) and set(parts.components) == {"mse", "kl"}
    with pytest.raises(UsageError, match="returned None"):
        interpret_loss(None, {})


def test_a_keyword_model_needs_no_loss_glue(diagnose):
    torch.manual_seed(0)
    features = [torch.randn(32, 4) for _ in range(3)]
    batches = [{"features": x, "labels": (x[:, 0] > 0).long()} for x in features]  # labels it can learn
    # a linear model under Adam: 1e-3 would be three decades below the rate that trains it (lr_too_low)
    report = diagnose({"model": Keywords(), "data": batches, "lr": 0.05})
    assert report["verdict"] == "healthy", report["findings"]


def _groups_optimizer(model):
    return torch.optim.AdamW(
        [{"params": [model.weight], "weight_decay": 0.1}, {"params": [model.bias], "weight_decay": 0.0, "lr": 1e-4}],
        lr=1e-3,
        betas=(0.8, 0.95),
    )


@pytest.mark.parametrize("shape", ["optimizer", "list", "lists_with_schedulers", "dict", "list_of_dicts"])
def test_the_optimizer_is_rebuilt_from_any_configure_optimizers_shape(shape):
    model = nn.Linear(3, 2)
    optimizer = _groups_optimizer(model)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01)  # warm-up: lr scaled now
    returned = {
        "optimizer": optimizer,
        "list": [optimizer],
        "lists_with_schedulers": ([optimizer], [scheduler]),
        "dict": {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler}},
        "list_of_dicts": [{"optimizer": optimizer, "lr_scheduler": scheduler}],
    }[shape]
    found = first_optimizer(returned)
    assert found is optimizer
    rebuilt = optimizer_like(found)(list(model.parameters()), 1e-1)
    assert type(rebuilt) is torch.optim.AdamW and optimizer_like(found).__name__ == "AdamW"
    # the warm-up scaled the groups' lr when it was built: the rates before it are what count
    assert [g["lr"] for g in rebuilt.param_groups] == pytest.approx([1e-1, 1e-2])
    assert [g["weight_decay"] for g in rebuilt.param_groups] == [0.1, 0.0]
    assert all(g["betas"] == (0.8, 0.95) and "initial_lr" not in g for g in rebuilt.param_groups)
    assert rebuilt.param_groups[0]["params"][0] is model.weight


def test_a_cyclic_schedules_peak_is_the_users_rate():
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.5, total_steps=10)
    setup = validate({"model": _Lit(model, optimizer), "data": [torch.zeros(2, 3)]}, "test")
    assert setup.lr == 0.5
    rebuilt = setup.optimizer(list(setup.model.parameters()), 0.01)
    assert type(rebuilt) is torch.optim.SGD  # settings as the instance holds them (OneCycle set momentum)
    assert rebuilt.param_groups[0]["momentum"] == optimizer.param_groups[0]["momentum"]
    assert rebuilt.param_groups[0]["lr"] == pytest.approx(0.01)


class _Lit(nn.Module):
    """Lightning's hooks by duck typing: no lightning import needed to be read as a LightningModule."""

    def __init__(self, inner, optimizer):
        super().__init__()
        self.inner, self._optimizer = inner, optimizer

    def training_step(self, batch, batch_idx):
        return {"loss": self.inner(batch).pow(2).mean(), "seen": torch.tensor(float(batch_idx))}

    def configure_optimizers(self):
        return self._optimizer


def test_trainer_settings_from_a_mapping():
    assert trainer_settings({"gradient_clip_val": 0.5, "precision": "16-mixed"}) == (0.5, "fp16")
    assert trainer_settings({"gradient_clip_val": 0, "precision": "bf16-mixed"}) == (None, "bf16")
    assert trainer_settings({"gradient_clip_val": 1.0, "gradient_clip_algorithm": "value"}) == (None, None)
    assert trainer_settings({"precision": "32-true"}) == (None, None)
    spec = {
        "model": nn.Linear(2, 1),
        "data": [torch.zeros(1, 2)],
        "trainer": {"gradient_clip_val": 2.0, "precision": 16},
    }
    setup = validate(spec, "test")
    assert (setup.grad_clip, setup.amp) == (2.0, "fp16")
    setup = validate(dict(spec, grad_clip=1.0, amp="bf16"), "test")  # the spec's own keys win
    assert (setup.grad_clip, setup.amp) == (1.0, "bf16")
