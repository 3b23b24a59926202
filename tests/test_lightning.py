"""A LightningModule and a LightningDataModule diagnosed with no glue (pytorch-lightning, the test extra)."""

import warnings

import pytest
import torch
from torch import nn

import nandoctor
from nandoctor.spec import validate

pl = pytest.importorskip("pytorch_lightning")


class Blobs(torch.utils.data.Dataset):
    """Four separable clusters in ten dimensions."""

    def __init__(self, count=256):
        g = torch.Generator().manual_seed(3)
        self.labels = torch.randint(0, 4, (count,), generator=g)
        self.points = (torch.randn(4, 10, generator=g) * 2)[self.labels] + torch.randn(count, 10, generator=g)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.points[index], self.labels[index]


class BlobData(pl.LightningDataModule):
    def __init__(self):
        super().__init__()
        self.stages = []

    def setup(self, stage):
        self.stages.append(stage)
        self.train = Blobs()

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.train, batch_size=32, shuffle=True)


class Classifier(pl.LightningModule):
    """Logs its accuracy and returns it beside the loss, as Lightning code does."""

    def __init__(self, lr=1e-2, hand_written_loss=False):
        super().__init__()
        self.lr, self.hand_written_loss = lr, hand_written_loss
        self.net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4))

    def training_step(self, batch, batch_idx):
        points, labels = batch
        logits = self.net(points)
        if self.hand_written_loss:  # log(softmax) of sharp logits: log(0) = -inf, times a 0 one-hot = NaN
            probabilities = torch.softmax(logits * 60, dim=-1)
            loss = -(torch.log(probabilities) * nn.functional.one_hot(labels, 4)).sum(-1).mean()
        else:
            loss = nn.functional.cross_entropy(logits, labels)
        accuracy = (logits.argmax(-1) == labels).float().mean()
        self.log("train_acc", accuracy, prog_bar=True)
        return {"loss": loss, "acc": accuracy * 100}  # a metric: never part of the loss

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 10)}


def diagnose_quietly(spec):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = nandoctor.diagnose(spec, progress=False)
    assert not [w for w in caught if "log" in str(w.message)], [str(w.message) for w in caught]
    return report


def test_a_lightning_module_and_data_module_need_no_glue():
    data = BlobData()
    setup = validate({"model": Classifier(), "data": data}, "test")
    assert data.stages == ["fit"] and isinstance(setup.data, torch.utils.data.DataLoader)
    assert setup.lr == 1e-2 and setup.optimizer.__name__ == "SGD"
    report = diagnose_quietly({"model": Classifier(), "data": BlobData(), "trainer": {"gradient_clip_val": 5.0}})
    assert report.verdict == "healthy", str(report)


def test_a_hand_written_loss_in_training_step_is_named():
    report = diagnose_quietly({"model": Classifier(hand_written_loss=True), "data": BlobData()})
    first = report.findings[0]
    assert first.code == "forward_nonfinite", str(report)
    assert first.where.op == "aten::log" and "test_lightning.py:" in first.where.source  # the user's line


def test_a_rate_far_too_high_in_configure_optimizers_is_named_and_swept_with_sgd():
    report = diagnose_quietly({"model": Classifier(lr=30.0), "data": BlobData()})
    first = report.findings[0]
    assert first.code == "lr_too_high" and 0 < first.fix.config["lr"] < 30.0, str(report)
    assert report.probes["dynamics"]["user_lr"] == 30.0


def test_a_trainer_gives_clipping_and_precision():
    trainer = pl.Trainer(
        gradient_clip_val=0.5,
        precision="bf16-mixed",
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    setup = validate({"model": Classifier(), "data": BlobData(), "trainer": trainer}, "test")
    assert (setup.grad_clip, setup.amp) == (0.5, "bf16")
    setup = validate({"model": Classifier(), "data": BlobData(), "trainer": {"precision": "16-mixed"}}, "test")
    assert (setup.grad_clip, setup.amp) == (None, "fp16")


class ManualGAN(pl.LightningModule):
    """Manual optimization with two optimizers, toggled as the Lightning docs do; ``log_of_zero``
    scores the fakes with a hand-written log(1 - sigmoid) of saturated logits: log(0) = -inf."""

    def __init__(self, log_of_zero=False):
        super().__init__()
        self.automatic_optimization = False
        self.log_of_zero = log_of_zero
        self.generator = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
        self.discriminator = nn.Sequential(nn.Linear(8, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        (real,) = batch
        g_opt, d_opt = self.optimizers()
        fake = self.generator(torch.randn(real.shape[0], 4))
        bce = nn.functional.binary_cross_entropy_with_logits
        ones, zeros = torch.ones(real.shape[0], 1), torch.zeros(real.shape[0], 1)
        self.toggle_optimizer(d_opt)
        if self.log_of_zero:
            d_loss = -torch.log(1 - torch.sigmoid(self.discriminator(fake.detach()) * 1e4)).mean()
        else:
            d_loss = bce(self.discriminator(real), ones) + bce(self.discriminator(fake.detach()), zeros)
        d_opt.zero_grad()
        self.manual_backward(d_loss)
        d_opt.step()
        self.untoggle_optimizer(d_opt)
        self.toggle_optimizer(g_opt)
        g_loss = bce(self.discriminator(fake), ones)
        g_opt.zero_grad()
        self.manual_backward(g_loss)
        g_opt.step()
        self.untoggle_optimizer(g_opt)
        self.log_dict({"g_loss": g_loss, "d_loss": d_loss})

    def configure_optimizers(self):
        return [
            torch.optim.Adam(self.generator.parameters(), lr=2e-4, betas=(0.5, 0.999)),
            torch.optim.Adam(self.discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999)),
        ]


def _gan(log_of_zero):
    g = torch.Generator().manual_seed(1)
    return {"model": ManualGAN(log_of_zero), "data": [(torch.randn(32, 8, generator=g) * 0.5 + 1,) for _ in range(6)]}


def test_a_manual_optimization_gan_is_diagnosed_with_the_optimizers_it_asks_for():
    setup = _gan(log_of_zero=False)
    model = setup["model"]
    report = nandoctor.diagnose(setup, progress=False)
    assert report.verdict == "healthy", [(f.code, f.title) for f in report.findings]
    assert "forward_error" not in str(report) and not report.coverage["probes_not_run"]
    assert "game" in report.probes["dynamics"]["skipped"]  # no summed loss of players has to fall
    assert not {"optimizers", "manual_backward", "toggle_optimizer"} & set(model.__dict__)
    assert all(p.requires_grad for p in model.parameters())  # toggling undone


def test_a_manual_optimization_gan_with_a_log_of_zero_is_found_at_its_line():
    report = nandoctor.diagnose(_gan(log_of_zero=True), quick=True, progress=False)
    top = report.findings[0]
    assert top.code in ("forward_nonfinite", "loss_component_nonfinite"), [(f.code, f.title) for f in report.findings]
    assert report.exit_code() == 1
