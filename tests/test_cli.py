"""The CLI end to end: CliRunner for the options, one real subprocess run of the entry point."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nandoctor.cli import app

SPECS = Path(__file__).parent / "specs"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, list(args))


def test_healthy_example_exits_0():
    result = invoke("diagnose", "nandoctor.examples.healthy:build")
    assert result.exit_code == 0, result.output
    assert "verdict: HEALTHY" in result.stdout


@pytest.mark.parametrize(
    "example, code",
    [
        ("log_softmax_nan", "forward_nonfinite"),
        ("norm_grad_nan", "loss_component_nonfinite"),
        ("small_vocab", "index_out_of_range"),
        ("nonfinite_init", "nonfinite_init"),
    ],
)
def test_broken_examples_exit_1_with_their_code_first(example, code):
    result = invoke("diagnose", f"nandoctor.examples.{example}:build", "--format", "json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["findings"][0]["code"] == code
    assert report["spec"] == f"nandoctor.examples.{example}:build"


def test_json_stdout_is_pure_json_and_out_file_matches(tmp_path):
    out = tmp_path / "report.json"
    result = invoke("diagnose", "nandoctor.examples.norm_grad_nan:build", "--format", "json", "--out", str(out))
    assert json.loads(result.stdout) == json.loads(out.read_text())


def test_fail_on_levels():
    assert invoke("diagnose", "nandoctor.examples.small_vocab:build", "--fail-on", "never").exit_code == 0
    assert invoke("diagnose", "nandoctor.examples.healthy:build", "--fail-on", "info").exit_code == 0


def test_probe_selection():
    result = invoke("diagnose", "nandoctor.examples.nonfinite_init:build", "--probe", "parameters", "--format", "json")
    report = json.loads(result.stdout)
    assert list(report["probes"]) == ["parameters"]
    result = invoke("diagnose", "nandoctor.examples.healthy:build", "--skip", "gradients", "--format", "json")
    assert "gradients" not in json.loads(result.stdout)["probes"]
    assert invoke("diagnose", "nandoctor.examples.healthy:build", "--probe", "nope").exit_code == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["diagnose", "missing.py:build"], "no such file: missing.py"),
        (["diagnose", f"{SPECS}/good_spec.py:build_raises"], "raised ValueError"),
        (["diagnose", f"{SPECS}/good_spec.py:build_empty_data"], "yielded no batches"),
        (["diagnose", f"{SPECS}/good_spec.py:build_data_raises"], "reading batches from 'data' raised OSError"),
        (["diagnose", f"{SPECS}/good_spec.py:build_vector_loss"], "scalar"),
        (["diagnose", f"{SPECS}/good_spec.py:build", "--set", "oops"], "key=value"),
        (["diagnose", "nandoctor.examples.healthy:build", "--settings", "nope.yaml"], "no such settings file"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message):
    result = invoke(*args)
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("nandoctor: error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.output


def test_embedding_index_error_is_a_finding_not_a_crash():
    result = invoke("diagnose", f"{SPECS}/good_spec.py:build_index_error", "--format", "json")
    assert result.exit_code == 1
    finding = json.loads(result.stdout)["findings"][0]
    assert finding["code"] == "index_out_of_range" and finding["where"]["module"] == "vocab"
    assert finding["evidence"]["max_id"] == 15 and finding["evidence"]["num_embeddings"] == 10


def test_version():
    assert invoke("--version").stdout.strip() == "nandoctor 0.1.0"


def test_help_imports_neither_torch_nor_pandas():
    code = (
        "import sys; from nandoctor.cli import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
        "sys.stderr.write(' '.join(m for m in ('torch', 'pandas') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stderr.strip() == ""


@pytest.mark.slow
def test_entry_point_subprocess_missing_file_and_example(tmp_path):
    missing = subprocess.run(["nandoctor", "diagnose", "missing.py:build"], capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.strip().splitlines()[-1] == "nandoctor: error: no such file: missing.py"
    assert "Traceback" not in missing.stderr
    run = subprocess.run(
        [sys.executable, "-m", "nandoctor", "diagnose", "nandoctor.examples.small_vocab:build", "--format", "json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode == 1
    assert json.loads(run.stdout)["findings"][0]["code"] == "index_out_of_range"
    assert "[1/" in run.stderr  # progress goes to stderr


def test_settings_file_mirrors_the_defaults():
    import yaml

    from nandoctor.settings import Settings, settings_yaml

    path = Path(__file__).parents[1] / "configs" / "probes.yaml"
    assert path.read_text() == settings_yaml(), "run python scripts/write_probe_settings.py --write"
    assert yaml.safe_load(path.read_text()) == Settings().as_dict()


def test_readme_codes_table_is_generated_from_codes():
    import importlib.util

    root = Path(__file__).parents[1]
    spec = importlib.util.spec_from_file_location("codes_table", root / "scripts" / "codes_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.codes_table() in (root / "README.md").read_text()


def test_user_prints_do_not_break_json_stdout():
    result = runner.invoke(app, ["diagnose", f"{SPECS}/good_spec.py:build_chatty", "--format", "json", "--quick"])
    assert json.loads(result.stdout)["verdict"] in ("healthy", "unhealthy")
    assert "forward!" in result.stderr
