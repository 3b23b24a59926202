"""Trust at every exit (issue 19): pasted snippets stay data, outputs never overwrite inputs, a run
that checks nothing is refused, ``--format json`` is one object on every exit, numbers are
range-checked, and the API refuses what it cannot mean."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

import nandoctor
from nandoctor import UsageError
from nandoctor.cli import app
from nandoctor.probes import PROBES
from nandoctor.results import Report

HEALTHY = "nandoctor.examples.healthy:build"

SPEC = textwrap.dedent("""
    import torch
    from torch import nn

    def build(mode="x", scale: float = 1.0):
        g = torch.Generator().manual_seed(0)
        data = [(torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g)) for _ in range(2)]
        return {"model": nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)), "data": data,
                "loss": lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]),
                "config": {"mode": mode, "scale": scale}}

    def build_slow():
        import time
        time.sleep(1.5)
        return build()

    def build_interrupted():
        raise KeyboardInterrupt

    class Broken(nn.Linear):
        def parameters(self, recurse=True):  # nandoctor's own code fails on it: an internal error
            raise RuntimeError("boom")

    def build_internal():
        return {"model": Broken(4, 1), "data": [torch.randn(3, 4)], "loss": lambda m, b: m(b).pow(2).mean()}
""")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("nandoctor: error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "spec.py"
    path.write_text(SPEC)
    return path


# ----------------------------------------------------------- 2. --emit-norm escapes column names

EVIL = 'safe\nimport os; os.environ["NANDOCTOR_PWNED"] = "1"\n"quoted" # \'x'


def test_emit_norm_snippets_keep_a_column_name_with_a_newline_as_data(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({EVIL: [1000.0 * i for i in range(200)], "plain": [0.5 * i for i in range(200)]})
    frame.to_parquet(tmp_path / "data.parquet")
    python = invoke("feature-stats", tmp_path / "data.parquet", "--emit-norm", "python")
    assert python.exit_code == 0, python.output
    module = nn.Module()
    namespace = {"module": module, "torch": torch}
    exec(python.stdout.replace("self.", "module."), namespace)
    assert "os" not in namespace and module.feature_mean.shape == (2,)
    assert not any(line.startswith("import") for line in python.stdout.splitlines())
    norm = yaml.safe_load(invoke("feature-stats", tmp_path / "data.parquet", "--emit-norm", "yaml").stdout)
    assert set(norm) == {EVIL, "plain"}


# ----------------------------------------------------------- 3. --out never overwrites an input


def test_out_never_overwrites_the_spec_file(spec_file):
    before = spec_file.read_bytes()
    result = invoke("diagnose", f"{spec_file}:build", "--quick", "--out", spec_file)
    assert result.exit_code == 2 and "input" in one_error_line(result)
    assert spec_file.read_bytes() == before


def test_out_never_overwrites_the_data_being_read(tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("a,b\n1,2\n3,4\n5,6\n")
    before = data.read_bytes()
    result = invoke("feature-stats", data, "--out", data)
    assert result.exit_code == 2 and "input" in one_error_line(result)
    assert data.read_bytes() == before


def test_out_never_overwrites_the_capture_being_replayed(tmp_path):
    from tests.test_guard import train_with_guard

    with pytest.raises(nandoctor.GuardTripped):
        train_with_guard(tmp_path, bad_step=9)
    capture = tmp_path / "capture.pt"
    before = capture.read_bytes()
    result = invoke("replay", capture, "--out", capture)
    assert result.exit_code == 2 and "input" in one_error_line(result)
    assert capture.read_bytes() == before


# ----------------------------------------------------------- 5. a run in which no probe runs


@pytest.mark.parametrize(
    "args", [["--probe", "dynamics", "--quick"], [arg for probe in PROBES for arg in ("--skip", probe.name)]]
)
def test_a_run_with_no_probe_left_is_a_usage_error(args):
    result = invoke("diagnose", HEALTHY, *args)
    assert result.exit_code == 2 and "no probe" in one_error_line(result)


def test_the_api_refuses_a_run_with_no_probe_left():
    with pytest.raises(UsageError, match="no probe"):
        nandoctor.diagnose(HEALTHY, probes=["dynamics"], quick=True, progress=False)


# ----------------------------------------------------------- 7. one JSON object on every exit


def error_object(result, kind):
    data = json.loads(result.stdout)
    assert data["verdict"] == "error" and data["error"]["kind"] == kind, data
    assert set(data) == {"nandoctor_version", "spec", "verdict", "error"} and data["error"]["message"]
    return data


@pytest.mark.parametrize(
    "args",
    [
        ["diagnose", "missing.py:build"],
        ["smoke", "missing.py:build"],
        ["lr-sweep", "missing.py:build"],
        ["replay", "missing.pt"],
        ["scan", "missing.py:build"],
        ["feature-stats", "missing.csv"],
        ["diagnose", HEALTHY, "--steps", "0"],
    ],
)
def test_format_json_prints_one_object_on_a_usage_error(args):
    result = invoke(*args, "--format", "json")
    assert result.exit_code == 2
    data = error_object(result, "usage")
    assert data["error"]["message"] in one_error_line(result)
    assert data["spec"] == (args[1] if args[0] not in ("replay", "feature-stats") else None)


def test_format_json_prints_one_object_on_an_internal_error_and_an_interrupt(spec_file):
    internal = invoke("scan", f"{spec_file}:build_internal", "--format", "json")
    assert internal.exit_code == 3 and "internal error" in error_object(internal, "internal")["error"]["message"]
    one_error_line(internal)
    interrupted = invoke("diagnose", f"{spec_file}:build_interrupted", "--format", "json")
    assert interrupted.exit_code == 130
    assert error_object(interrupted, "interrupted")["spec"] == f"{spec_file}:build_interrupted"


def test_smoke_junit_writes_an_error_testcase_on_a_usage_error(tmp_path):
    from xml.etree import ElementTree

    out = tmp_path / "smoke.xml"
    result = invoke("smoke", "missing.py:build", "--format", "junit", "--out", out)
    assert result.exit_code == 2
    for text in (result.stdout, out.read_text()):
        suite = ElementTree.fromstring(text)
        assert suite.get("errors") == "1" and len(suite.findall("./testcase/error")) == 1


# ----------------------------------------------------------- 9. lr-sweep --plot


def test_plot_with_an_unsupported_extension_is_refused_before_the_sweep(tmp_path):
    result = invoke("lr-sweep", HEALTHY, "--plot", tmp_path / "curves.xyz")
    assert result.exit_code == 2 and ".xyz" in one_error_line(result)
    assert "nandoctor: lr " not in result.stderr  # no rate was trained


def test_results_are_written_before_the_plot(tmp_path):
    # .pgf is a format matplotlib knows, but it needs a LaTeX install to draw: it may fail here
    out = tmp_path / "sweep.json"
    result = invoke(
        "lr-sweep",
        HEALTHY,
        "--lrs",
        "1e-3,1e-2",
        "--steps",
        "2",
        "--format",
        "json",
        "--out",
        out,
        "--plot",
        tmp_path / "curves.pgf",
    )
    assert result.exit_code in (0, 1, 3), result.output
    assert json.loads(result.stdout)["runs"] and json.loads(out.read_text())["runs"]
    if result.exit_code == 3:
        one_error_line(result)


# ----------------------------------------------------------- 10. numbers are range-checked


@pytest.mark.parametrize(
    "args",
    [
        ["diagnose", HEALTHY, "--steps", "0"],
        ["diagnose", HEALTHY, "--steps", "-1"],
        ["lr-sweep", HEALTHY, "--steps", "0"],
        ["diagnose", HEALTHY, "--batches", "0"],
        ["lr-sweep", HEALTHY, "--batches", "0"],
    ],
)
def test_counts_below_one_are_usage_errors(args):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    one_error_line(result)


@pytest.mark.parametrize(
    "text, says",
    [
        ("sweep_steps: 0\n", "sweep_steps"),
        ("sweep_max_decades: -1\n", "sweep_max_decades"),
        ("tie_tolerance: -0.1\n", "tie_tolerance"),
        ("sweep_steps: [1\nbatches: 2\n", "not valid YAML"),
    ],
)
def test_settings_out_of_range_or_broken_are_one_line(tmp_path, text, says):
    settings = tmp_path / "settings.yaml"
    settings.write_text(text)
    result = invoke("lr-sweep", HEALTHY, "--settings", settings)
    assert result.exit_code == 2 and says in one_error_line(result)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_set_keeps_a_word_a_string_unless_the_default_is_a_float(spec_file):
    setup = nandoctor.api.load(f"{spec_file}:build", ["mode=nan", "scale=inf"], progress=lambda m: None)
    assert setup.config["mode"] == "nan" and setup.config["scale"] == float("inf")
    assert nandoctor.api.load(f"{spec_file}:build", ["mode=inf"], progress=lambda m: None).config["mode"] == "inf"


# ----------------------------------------------------------- 22. the API


def test_a_model_passed_as_the_spec_is_recognised_and_never_called():
    class Recording(nn.Linear):
        calls = 0

        def forward(self, *args):
            Recording.calls += 1
            return super().forward(*args)

    with pytest.raises(UsageError, match="'model': model"):
        nandoctor.diagnose(Recording(4, 1), progress=False)
    assert Recording.calls == 0


@pytest.mark.parametrize(
    "call",
    [
        lambda: nandoctor.lr_sweep(HEALTHY, lrs=1e-3, progress=False),
        lambda: nandoctor.lr_sweep(HEALTHY, lrs=["1e-3", "1e-2"], progress=False),
        lambda: nandoctor.lr_sweep(HEALTHY, steps="3", progress=False),
        lambda: nandoctor.lr_sweep(HEALTHY, steps=2.5, progress=False),
        lambda: nandoctor.diagnose(HEALTHY, steps="3", progress=False),
        lambda: nandoctor.diagnose(HEALTHY, probes="forward", progress=False),
    ],
)
def test_wrong_argument_types_are_usage_errors(call):
    with pytest.raises(UsageError):
        call()


def test_lr_sweep_without_progress_prints_nothing(capfd):
    nandoctor.lr_sweep(HEALTHY, lrs=[1e-3, 1e-2], steps=2, progress=False)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_a_report_read_back_from_its_json_equals_it():
    report = nandoctor.diagnose("nandoctor.examples.log_softmax_nan:build", quick=True, progress=False)
    assert report.findings
    assert Report.from_dict(json.loads(report.to_json())) == report
    with pytest.raises(UsageError):
        report.exit_code("bogus")


def test_smoke_budget_counts_the_build_time(spec_file):
    result = invoke("smoke", f"{spec_file}:build_slow", "--budget", "1s", "--format", "json")
    assert result.exit_code == 3, result.output
    assert json.loads(result.stdout)["verdict"] == "incomplete"


def test_the_entry_point_prints_one_json_object_on_a_usage_error(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "nandoctor", "diagnose", "missing.py:build", "--format", "json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode == 2 and json.loads(run.stdout)["error"]["kind"] == "usage"
