"""A failure of nandoctor's own is never blamed on the user, and never exits 1 ("unhealthy").

Double-precision models, lazy modules, sparse inputs and meta tensors are setups nandoctor must
measure, not crash on; a probe that does crash makes the run incomplete (exit 3) with a pointer to
--debug; Ctrl-C and unwritable output paths end the run cleanly.
"""

from __future__ import annotations

import json
import textwrap
from contextlib import ExitStack

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from typer.testing import CliRunner

from nandoctor.cli import app, write_output
from nandoctor.findings import Finding, Severity, Where
from nandoctor.measure.hooks import module_names, ours
from nandoctor.probes import PROBES
from nandoctor.probes.base import Fact, Probe, ProbeResult
from tests.test_leaves_no_trace import QUICK

runner = CliRunner()


def _write(tmp_path, body: str) -> str:
    path = tmp_path / "build_spec.py"
    path.write_text(
        "import torch\nfrom torch import nn\nfrom torch.nn import functional as F\n\n" + textwrap.dedent(body)
    )
    return f"{path}:build"


class GatedMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.value, self.gate = nn.Linear(5, 16), nn.Linear(5, 16)
        self.out = nn.Linear(16, 1)

    def forward(self, x):
        return self.out(torch.tanh(self.value(x)) * torch.sigmoid(self.gate(x)))


def double_setup():
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(32, 5, generator=g, dtype=torch.float64) for _ in range(3)]
    data = [(x, x[:, :2].sum(1, keepdim=True) - x[:, 4:]) for x in inputs]  # a target the inputs explain
    return {"model": GatedMLP().double(), "data": data, "loss": lambda m, b: F.mse_loss(m(b[0]), b[1])}


def test_a_float64_model_is_healthy(diagnose):
    report = diagnose(double_setup())
    assert report["verdict"] == "healthy", report["findings"] or report["coverage"]
    assert report["coverage"]["probes_not_run"] == {}


def test_a_float64_model_keeps_values_beyond_float32_range(diagnose):
    """Statistics of a double model are kept in double: 1e200 is finite there."""

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(5, 1)

        def forward(self, x):
            return self.proj(x) * 1e200

    built = double_setup()
    built.update(model=Scaled().double(), loss=lambda m, b: (m(b[0]) * 1e-200 - b[1]).pow(2).mean())
    report = diagnose(built, probes=QUICK)
    assert not any(f["code"].startswith("forward") for f in report["findings"]), report["findings"]
    assert report["coverage"]["probes_not_run"] == {}


def hooked_forward(ctx, hook):
    """The loss without gradients over the cached batches, ``hook(name, module, output)`` guarded as ours."""
    names = module_names(ctx.model)
    call = ours(lambda module, args, output: hook(names[id(module)], module, output))
    with ExitStack() as handles, torch.no_grad():
        for module in ctx.model.modules():
            handles.enter_context(module.register_forward_hook(call))
        for batch in ctx.batches:
            ctx.loss(batch)


class BrokenHookProbe(Probe):
    """A probe with a bug: its hook raises inside the user's forward."""

    name = "broken_hook"
    description = "test probe whose hook raises"
    order = 21
    requires = (Fact.FORWARD_RUNS,)

    def run(self, ctx):
        def hook(name, module, output):
            raise RuntimeError("bug in our hook")

        hooked_forward(ctx, hook)
        return ProbeResult([Finding("forward_error", Severity.CRITICAL, "never", Where(module=""))])


class BrokenProbe(Probe):
    name = "broken"
    description = "test probe that raises"
    order = 22

    def run(self, ctx):
        return {}["missing"]


@pytest.fixture
def broken_probes():
    PROBES.extend([BrokenHookProbe, BrokenProbe])
    try:
        yield
    finally:
        PROBES.remove(BrokenHookProbe)
        PROBES.remove(BrokenProbe)


def test_a_probe_that_crashes_makes_the_run_incomplete_never_a_finding(broken_probes):
    from nandoctor.runner import build_report, run_probes
    from nandoctor.settings import Settings
    from nandoctor.spec import validate

    built = double_setup()
    parts = run_probes(
        validate(built, "t:b"), Settings(), [p for p in PROBES if p.name != "dynamics"], progress=lambda message: None
    )
    report = build_report("t:b", parts).to_dict()
    assert report["verdict"] == "incomplete" and report["findings"] == []
    missed = report["coverage"]["probes_not_run"]
    assert set(missed) == {"broken_hook", "broken"}
    assert missed["broken_hook"].startswith("internal error in probe broken_hook: RuntimeError: bug in our hook")
    assert "--debug" in missed["broken"] and "KeyError" in missed["broken"]
    assert "gradients" in report["coverage"]["probes_run"]  # the other probes still ran


def test_cli_exits_3_for_a_crashed_probe_with_or_without_debug(broken_probes):
    args = ["diagnose", "nandoctor.examples.healthy:build", "--probe", "broken_hook"]
    result = runner.invoke(app, args)
    assert result.exit_code == 3, result.output
    assert "internal error in probe broken_hook" in result.stdout and "--debug" in result.stdout
    debug = runner.invoke(app, args + ["--debug"])
    assert debug.exit_code == 3  # a traceback never exits 1
    assert "Traceback" in debug.stderr and "bug in our hook" in debug.stderr


def test_lazy_modules_are_initialized_not_a_crash(diagnose, capsys):
    model = nn.Sequential(nn.LazyLinear(16), nn.ReLU(), nn.LazyLinear(1))
    data = [(torch.randn(16, 7), torch.randn(16, 1)) for _ in range(3)]
    report = diagnose({"model": model, "data": data, "loss": lambda m, b: F.mse_loss(m(b[0]), b[1])}, probes=QUICK)
    assert report["verdict"] == "healthy", report["findings"] or report["coverage"]
    assert model[0].weight.shape == (16, 7)


def test_sparse_inputs_are_measured(diagnose):
    class BagOfWords(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(50, 8) * 0.1)
            self.head = nn.Linear(8, 1)

        def forward(self, x):
            return self.head(torch.relu(torch.sparse.mm(x, self.weight)))

    g = torch.Generator().manual_seed(0)
    data = [
        ((torch.rand(16, 50, generator=g) < 0.1).float().to_sparse(), torch.randn(16, 1, generator=g)) for _ in range(3)
    ]
    report = diagnose(
        {"model": BagOfWords(), "data": data, "loss": lambda m, b: F.mse_loss(m(b[0]), b[1])}, probes=QUICK
    )
    assert report["verdict"] == "healthy", report["findings"] or report["coverage"]


def test_sparse_inputs_never_crash_the_traced_pass(diagnose):
    """The traced pass measures sparse tensors (their stored values and the implicit zeros)."""

    class SparseSum(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(6, 1)

        def forward(self, x):
            return self.head(x.to_dense())

    data = [(torch.eye(6).to_sparse() * 2.0, torch.randn(6, 1)) for _ in range(2)]
    report = diagnose(
        {"model": SparseSum(), "data": data, "loss": lambda m, b: F.mse_loss(m(b[0]), b[1])},
        probes=[p for p in QUICK if p.name in ("forward", "backward", "gradients")],
    )
    assert report["verdict"] == "healthy", report["findings"] or report["coverage"]


def test_a_model_on_the_meta_device_is_a_usage_error(tmp_path):
    spec = _write(
        tmp_path,
        """
        def build():
            with torch.device("meta"):
                model = nn.Linear(4, 1)
            return {"model": model, "data": [(torch.randn(8, 4), torch.randn(8, 1))],
                    "loss": lambda m, b: F.mse_loss(m(b[0]), b[1])}
    """,
    )
    result = runner.invoke(app, ["diagnose", spec])
    assert result.exit_code == 2, result.output
    assert "meta device" in result.stderr and "Traceback" not in result.output
    assert "forward_error" not in result.output


def test_ctrl_c_says_nothing_changed_and_exits_130(tmp_path):
    spec = _write(
        tmp_path,
        """
        MODEL = nn.Linear(4, 1)

        def interrupted(model, batch):
            raise KeyboardInterrupt

        def build():
            return {"model": MODEL, "data": [(torch.randn(8, 4), torch.randn(8, 1))], "loss": interrupted}
    """,
    )
    out = tmp_path / "report.json"
    result = runner.invoke(app, ["diagnose", spec, "--out", str(out)])
    assert result.exit_code == 130
    assert "interrupted; nothing was changed" in result.stderr
    assert not out.exists()


def test_unwritable_output_is_refused_before_any_probe_runs(tmp_path):
    for flag in ("--out", "--write-fixed"):
        args = ["diagnose", "nandoctor.examples.healthy:build", flag, str(tmp_path / "missing" / "x")]
        if flag == "--write-fixed":
            config = tmp_path / "train.yaml"
            config.write_text("lr: 0.001\n")
            args += ["--config", str(config)]
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "does not exist" in result.stderr
        assert "loading" not in result.stderr  # refused before the build function ran
    folder = runner.invoke(app, ["diagnose", "nandoctor.examples.healthy:build", "--out", str(tmp_path)])
    assert folder.exit_code == 2 and "is a folder" in folder.stderr


def test_the_report_is_printed_even_when_writing_it_fails(tmp_path, capsys):
    write_output(tmp_path, "{}")  # a folder: writing fails, and says so
    assert "could not write" in capsys.readouterr().err
    result = runner.invoke(
        app, ["diagnose", "nandoctor.examples.healthy:build", "--quick", "--format", "json", "--out", "/dev/full"]
    )
    assert result.exit_code == 0
    assert json.loads(result.stdout)["verdict"] == "healthy"
    assert "could not write /dev/full" in result.stderr
