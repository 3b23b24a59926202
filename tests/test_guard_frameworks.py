"""The guard inside Lightning's ``Trainer.fit`` and Hugging Face's ``Trainer.train``: a NaN at step N,
captured, replayed."""

import json
import sys
import textwrap

import pytest
import torch
from typer.testing import CliRunner

from nandoctor.cli import app
from nandoctor.guard import GuardTripped
from nandoctor.guard.capture import load_capture

MODELS = textwrap.dedent('''
    import torch
    from torch import nn
    from torch.nn import functional as F
    from torch.utils.data import Dataset


    class Rows(Dataset):
        """256 rows of 6 features and a class; row ``bad`` holds a NaN."""

        def __init__(self, bad=None):
            g = torch.Generator().manual_seed(0)
            self.x, self.y = torch.randn(256, 6, generator=g), torch.randint(0, 3, (256,), generator=g)
            if bad is not None:
                self.x[bad, 2] = float("nan")

        def __len__(self):
            return 256

        def __getitem__(self, i):
            return {"features": self.x[i], "labels": self.y[i]}


    class Scorer(nn.Module):
        """Hugging Face style: named inputs, an output mapping with its loss."""

        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))

        def forward(self, features, labels=None):
            logits = self.body(features)
            return {"loss": F.cross_entropy(logits, labels), "logits": logits}


    def build():
        return {"model": Scorer(), "data": [Rows()[0:8]], "loss": lambda m, b: m(**b)["loss"]}
''')

LIGHTNING = textwrap.dedent("""
    import torch
    import pytorch_lightning as pl
    from models import Rows, Scorer


    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = Scorer()

        def training_step(self, batch, batch_index):
            return self.net(**batch)["loss"]

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-2)


    def build():
        return {"model": Module(), "data": [Rows()[0:8]], "loss": lambda m, b: m.training_step(b, 0)}
""")


def _write(tmp_path):
    (tmp_path / "models.py").write_text(MODELS)
    namespace: dict = {}
    exec(compile(MODELS, str(tmp_path / "models.py"), "exec"), namespace)
    return namespace


def _replayed(path):
    result = CliRunner().invoke(app, ["replay", str(path), "--format", "json", "--trust-spec"])
    assert result.exit_code == 1, result.output
    return json.loads(result.stdout)


def _lightning_module(tmp_path, monkeypatch):
    """models.py and lit.py written beside each other; (models' namespace, a seeded Module)."""
    models = _write(tmp_path)
    (tmp_path / "lit.py").write_text(LIGHTNING)
    monkeypatch.syspath_prepend(str(tmp_path))  # lit.py imports its sibling models.py
    monkeypatch.delitem(sys.modules, "models", raising=False)
    namespace: dict = {}
    exec(compile(LIGHTNING, str(tmp_path / "lit.py"), "exec"), namespace)
    torch.manual_seed(0)
    return models, namespace["Module"]()


def test_lightning_fit_is_stopped_at_the_nan_and_replayed(tmp_path, monkeypatch):
    pl = pytest.importorskip("pytorch_lightning")
    from torch.utils.data import DataLoader

    from nandoctor.integrations.lightning import NanGuardCallback

    models, module = _lightning_module(tmp_path, monkeypatch)
    spec = f"{tmp_path / 'lit.py'}:build"
    callback = NanGuardCallback(path=str(tmp_path / "capture.pt"), check_every=4, spec=spec)
    trainer = pl.Trainer(
        max_steps=30,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    loader = DataLoader(models["Rows"](bad=8 * 13 + 3), batch_size=8)
    with pytest.raises(GuardTripped, match="at step 13"):
        trainer.fit(module, loader)
    capture = load_capture(tmp_path / "capture.pt")
    assert capture["reason"] == "nonfinite_loss" and capture["window_start"] == 12
    assert not torch.isfinite(capture["batches"][-1]["features"]).all()
    assert all(not m._forward_hooks for m in module.modules())
    report = _replayed(tmp_path / "capture.pt")
    assert report["replay"]["reproduced"] and report["findings"][0]["code"] == "nonfinite_input"
    sys.modules.pop("models", None)


def test_hf_trainer_train_is_stopped_at_the_nan_and_replayed(tmp_path):
    transformers = pytest.importorskip("transformers")

    from nandoctor.integrations.hf import NanGuardCallback

    models = _write(tmp_path)
    torch.manual_seed(0)
    model = models["Scorer"]()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        max_steps=30,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    spec = f"{tmp_path / 'models.py'}:build"
    callback = NanGuardCallback(path=str(tmp_path / "capture.pt"), check_every=4, spec=spec)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=models["Rows"](bad=100), callbacks=[callback])
    with pytest.raises(GuardTripped) as raised:
        trainer.train()
    capture = load_capture(tmp_path / "capture.pt")
    assert capture["step"] == raised.value.step and capture["reason"] == "nonfinite_loss"
    assert not torch.isfinite(capture["batches"][-1]["features"]).all()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    report = _replayed(tmp_path / "capture.pt")
    assert report["replay"]["reproduced"] and report["findings"][0]["code"] == "nonfinite_input"


def test_lightning_with_gradient_accumulation_keeps_every_micro_batch(tmp_path, monkeypatch):
    pl = pytest.importorskip("pytorch_lightning")
    from torch.utils.data import DataLoader

    from nandoctor.guard.capture import MicroBatches
    from nandoctor.integrations.lightning import NanGuardCallback

    models, module = _lightning_module(tmp_path, monkeypatch)
    callback = NanGuardCallback(path=str(tmp_path / "capture.pt"), check_every=2, spec=f"{tmp_path / 'lit.py'}:build")
    trainer = pl.Trainer(
        max_steps=30,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        accumulate_grad_batches=2,
    )
    loader = DataLoader(models["Rows"](bad=8 * 13 + 3), batch_size=8)  # micro-batch 13: the 2nd of step 6
    with pytest.raises(GuardTripped, match="at step 6"):
        trainer.fit(module, loader)
    failing = load_capture(tmp_path / "capture.pt")["batches"][-1]
    assert isinstance(failing, MicroBatches) and len(failing) == 2
    assert torch.isfinite(failing[0]["features"]).all() and not torch.isfinite(failing[1]["features"]).all()
    report = _replayed(tmp_path / "capture.pt")
    assert report["replay"]["reproduced"] and report["findings"][0]["code"] == "nonfinite_input"


def test_hf_trainer_with_gradient_accumulation_keeps_every_micro_batch(tmp_path):
    transformers = pytest.importorskip("transformers")

    from nandoctor.guard.capture import MicroBatches
    from nandoctor.integrations.hf import NanGuardCallback

    models = _write(tmp_path)
    torch.manual_seed(0)
    model = models["Scorer"]()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=30,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    callback = NanGuardCallback(
        path=str(tmp_path / "capture.pt"), check_every=4, spec=f"{tmp_path / 'models.py'}:build"
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=models["Rows"](bad=100), callbacks=[callback])
    with pytest.raises(GuardTripped):
        trainer.train()
    failing = load_capture(tmp_path / "capture.pt")["batches"][-1]
    assert isinstance(failing, MicroBatches) and len(failing) == 2
    assert any(not torch.isfinite(micro["features"]).all() for micro in failing)
    report = _replayed(tmp_path / "capture.pt")
    assert report["replay"]["reproduced"] and report["findings"][0]["code"] == "nonfinite_input"
