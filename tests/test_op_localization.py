"""The op-level pass: the op and the user's line that make NaN/Inf, only after the cheap pass failed."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tests.fixtures import losses, models, ops

FIXTURES = Path(ops.__file__).parent


def source_of(path: Path, text: str) -> str:
    """``file:line`` of the line holding ``text``, relative to the working directory like the reports."""
    lines = path.read_text().splitlines()
    number = next(i for i, line in enumerate(lines, 1) if text in line)
    shown = os.path.relpath(path) if path.resolve().is_relative_to(Path.cwd().resolve()) else str(path)
    return f"{shown}:{number}"


def codes(report):
    return [f["code"] for f in report["findings"]]


def test_nan_from_log_in_the_loss_function_names_the_op_and_line(diagnose):
    report = diagnose(ops.log_in_loss())
    top = report["findings"][0]
    assert top["code"] == "forward_nonfinite"
    assert top["where"]["op"] == "aten::log" and top["where"]["module"] is None
    assert top["where"]["source"] == source_of(FIXTURES / "ops.py", "# op: log")
    assert "aten::log" in top["title"] and top["where"]["source"] in top["fix"]["advice"]
    assert report["probes"]["forward"]["op_pass"]["site"]["op"] == "aten::log"


def test_nan_from_functional_code_between_modules_names_the_op_and_line(diagnose):
    top = diagnose(ops.shares_of_zero_rows())["findings"][0]
    assert top["code"] == "forward_nonfinite"
    assert (top["where"]["module"], top["where"]["op"]) == ("", "aten::div")
    assert top["where"]["source"] == source_of(FIXTURES / "ops.py", "# op: div")


def test_inf_made_on_purpose_is_not_the_origin(diagnose):
    """A -inf mask filled in by hand is fine; the NaN is made where a fully masked row is softmaxed."""

    class MaskedAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.score = nn.Linear(4, 1)

        def forward(self, x, mask):
            scores = self.score(x).squeeze(-1).masked_fill(~mask, float("-inf"))
            weights = torch.softmax(scores, -1)  # a row with no valid position: NaN
            return (weights.unsqueeze(-1) * x).sum(1)

    mask = torch.ones(6, 5, dtype=torch.bool)
    mask[0] = False
    data = [(torch.randn(6, 5, 4), mask, torch.randn(6, 4))]
    top = diagnose({"model": MaskedAttention(), "data": data, "loss": lambda m, b: F.mse_loss(m(b[0], b[1]), b[2])})[
        "findings"
    ][0]
    assert (top["code"], top["where"]["op"]) == ("forward_nonfinite", "aten::_softmax")
    assert top["where"]["source"] == source_of(Path(__file__), "# a row with no valid position")


def test_fp16_overflow_in_the_loss_function_leads_with_amp_overflow(diagnose):
    report = diagnose(ops.clip_loss_fp16())
    top = report["findings"][0]
    assert top["code"] == "amp_overflow" and top["severity"] == "critical", codes(report)
    assert top["where"]["module"] is None and top["where"]["op"] == "aten::div"
    assert top["where"]["source"] == source_of(FIXTURES / "ops.py", "# op: clip logits")
    assert (
        top["evidence"]["float32_loss"] < 1e6 and top["evidence"]["autocast_loss"] != top["evidence"]["autocast_loss"]
    )
    # the large gradients in float32 come from the same logits: folded under the overflow
    assert "exploding_gradients" not in codes(report)
    assert "exploding_gradients" in [e["code"] for e in top["evidence"].get("explains", [])]


def test_amp_overflow_in_a_module_names_its_op_and_line(diagnose):
    top = diagnose(losses.logits_fp16())["findings"][0]
    assert (top["code"], top["where"]["module"]) == ("amp_overflow", "similarity")
    assert top["where"]["op"] in ("aten::mm", "aten::div")
    assert top["where"]["source"] == source_of(Path(losses.__file__), "return text @ image.T / self.temperature")


def test_op_pass_does_not_run_on_a_healthy_model(diagnose):
    report = diagnose(ops.normalized_clip_fp16())
    assert report["verdict"] == "healthy"
    assert report["probes"]["forward"]["op_pass"] == "not run: the traced pass was finite"
    assert report["probes"]["amp"]["op_pass"].startswith("not run")


def test_backward_nan_names_the_autograd_op_and_the_line_that_made_it(diagnose):
    top = diagnose(models.bad_padded_norm())["findings"][0]
    assert top["code"] == "backward_nonfinite"
    assert top["where"]["op"] == "SqrtBackward0"
    assert top["where"]["source"] == source_of(Path(models.__file__), "return (v.pow(2).sum(-1) + self.eps).sqrt()")


def test_component_gradient_nan_names_op_and_line(diagnose):
    top = diagnose(models.bad_pairwise_sqrt())["findings"][0]
    assert (top["code"], top["where"]["component"], top["where"]["op"]) == (
        "loss_component_nonfinite",
        "spread",
        "SqrtBackward0",
    )
    assert top["where"]["source"] == source_of(Path(models.__file__), "return -(squared + eps).sqrt().mean()")


def test_component_value_nan_names_op_and_line(diagnose):
    top = diagnose(losses.contrastive_zero_norm())["findings"][0]
    assert (top["code"], top["where"]["component"], top["where"]["op"]) == (
        "loss_component_nonfinite",
        "supcr",
        "aten::div",
    )
    assert top["where"]["source"] == source_of(Path(losses.__file__), "normed = z / z.norm(p=2, dim=1, keepdim=True)")


# --- crashes inside an installed package point at the user's line ---------------------------

PACKAGE = '''
import torch
from torch import nn
from torch.nn import functional as F


def pick(x, index):
    return torch.gather(x, 1, index)


class Classifier(nn.Module):
    """Computes its own loss, as Hugging Face models do when given labels."""

    def __init__(self, classes):
        super().__init__()
        self.body = nn.Linear(6, classes)

    def forward(self, x, labels):
        return F.cross_entropy(self.body(x), labels)
'''


@pytest.fixture
def installed(tmp_path, monkeypatch):
    folder = tmp_path / "lib" / "python3" / "site-packages" / "pickers"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(PACKAGE)
    monkeypatch.syspath_prepend(str(folder.parent))
    monkeypatch.delitem(__import__("sys").modules, "pickers", raising=False)
    return importlib.import_module("pickers")


class Picker(nn.Module):
    def __init__(self, pick, columns):
        super().__init__()
        self.proj = nn.Linear(6, 8)
        self.pick = pick
        self.register_buffer("columns", torch.tensor(columns))

    def forward(self, x):
        index = self.columns.expand(len(x), -1)
        return self.pick(self.proj(x), index)  # calls into the installed package


def _rows():
    g = torch.Generator().manual_seed(31)
    return [(torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(2)]


def test_crash_inside_an_installed_package_points_at_the_users_line(diagnose, installed):
    report = diagnose(
        {"model": Picker(installed.pick, [0, 9]), "data": _rows(), "loss": lambda m, b: m(b[0]).pow(2).mean()}
    )
    top = report["findings"][0]
    assert top["code"] == "forward_error"
    assert top["where"]["source"] == source_of(Path(__file__), "# calls into the installed package")
    assert "site-packages" not in top["fix"]["advice"] and top["where"]["source"] in top["fix"]["advice"]
    assert top["where"]["op"] == "aten::gather"


def test_crash_inside_an_installed_model_points_at_the_loss_line(diagnose, installed):
    def loss(m, b):
        return m(b[0], b[1])  # labels reach 2 with 2 classes

    report = diagnose({"model": installed.Classifier(2), "data": _rows(), "loss": loss})
    top = report["findings"][0]  # the labels check names the cause before the package's crash
    assert top["code"] == "label_out_of_range" and "site-packages" not in top["fix"]["advice"]
    crash = next(e for e in top["evidence"]["explains"] if e["code"] == "forward_error")
    assert crash["where"]["source"] == source_of(Path(__file__), "# labels reach 2 with 2 classes")
    assert "site-packages" not in crash["title"]


def test_installed_package_used_correctly_is_healthy(diagnose, installed):
    class ConvPicker(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(1, 4, 3, padding=1)

        def forward(self, x):
            h = self.conv(x.unsqueeze(1)).mean(1)
            return installed.pick(h, torch.zeros(len(x), 1, dtype=torch.long))

    report = diagnose({"model": ConvPicker(), "data": _rows(), "loss": lambda m, b: m(b[0]).pow(2).mean()})
    assert report["verdict"] == "healthy", [(f["code"], f["title"]) for f in report["findings"]]


# --- an op with no half kernel on the CPU is not the user's bug -----------------------------


class VolumeHead(nn.Module):
    """Predicts a 3x3 Jacobian per sample and its log-volume, as a flow layer does."""

    def __init__(self):
        super().__init__()
        self.jacobian = nn.Linear(4, 9)
        with torch.no_grad():
            self.jacobian.weight.mul_(0.1)
            self.jacobian.bias.copy_(torch.eye(3).flatten())

    def forward(self, x):
        jacobian = self.jacobian(x).view(-1, 3, 3)
        return torch.det(jacobian).abs().clamp_min(1e-6).log()


def test_missing_half_kernel_on_cpu_is_said_not_blamed(diagnose):
    data = [(torch.randn(8, 4), torch.zeros(8)) for _ in range(2)]
    report = diagnose(
        {"model": VolumeHead(), "data": data, "amp": "fp16", "loss": lambda m, b: F.mse_loss(m(b[0]), b[1])}
    )
    assert not [f for f in report["findings"] if f["severity"] != "info"], codes(report)
    note = next(f for f in report["findings"] if f["code"] == "forward_error")
    assert "kernel" in note["title"] and note["where"]["op"]
    assert note["evidence"]["device"] == "cpu"


def test_what_if_overflow_stays_info_and_folds_nothing(diagnose):
    """A float32 spec checked as a what-if: the overflow is information, the real symptom stays visible."""
    from nandoctor.settings import Settings

    spec = dict(ops.clip_loss_fp16(), amp=None)
    report = diagnose(spec, settings=Settings(amp_what_if="fp16"))
    overflow = next(f for f in report["findings"] if f["code"] == "amp_overflow")
    assert overflow["severity"] == "info" and overflow["where"]["op"] == "aten::div"
    assert "explains" not in overflow["evidence"]
    assert "exploding_gradients" in codes(report)


def test_a_forward_our_check_stopped_is_not_run_again(diagnose):
    """Ids beyond an embedding are caught before it runs (on CUDA they would kill the process): no op pass."""
    report = diagnose(models.bad_sensor_vocab())
    assert report["findings"][0]["code"] == "index_out_of_range"
    assert report["probes"]["forward"]["op_pass"].startswith("not run")
