"""Fixed configs, explain, smoke for CI, Markdown/JUnit, and one fixture pair per contract code."""

import json
import shutil
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from nandoctor.cli import app
from nandoctor.codes import CODES
from tests.fixtures import all_cases
from tests.fixtures.dynamics import DYNAMICS_CASES

SPECS = Path(__file__).parent / "specs"
runner = CliRunner()

CONTRACT_CODES = [
    "nonfinite_input",
    "unnormalized_input",
    "index_out_of_range",
    "nonfinite_init",
    "forward_nonfinite",
    "backward_nonfinite",
    "activation_explosion",
    "exploding_gradients",
    "vanishing_gradients",
    "saturation",
    "dead_units",
    "lr_too_high",
    "lr_too_low",
    "loss_component_nonfinite",
    "loss_component_explosion",
    "amp_overflow",
    "grad_clip_too_aggressive",
    "loss_plateau",
    "device_mismatch",
    "label_out_of_range",
    "no_gradient_path",
    "target_out_of_range",
    "loss_shape_mismatch",
    "rank_divergence",
]
DETECTED = list(CONTRACT_CODES)  # every contract code has a detector, a fixture and a twin


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def config_copy(tmp_path):
    path = tmp_path / "train.yaml"
    shutil.copy(SPECS / "train.yaml", path)
    return path


def test_write_fixed_changes_only_the_fixed_values_and_then_trains(config_copy, tmp_path):
    fixed = tmp_path / "fixed.yaml"
    spec = f"{SPECS}/config_spec.py:build"
    before = config_copy.read_text()
    result = invoke(
        "diagnose",
        spec,
        "--set",
        f"config_path={config_copy}",
        "--config",
        config_copy,
        "--write-fixed",
        fixed,
        "--format",
        "json",
    )
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["findings"][0]["code"] == "lr_too_high"
    assert list(report["findings"][0]["fix"]["config"]) == ["optim.learning_rate"]
    assert config_copy.read_text() == before  # the input is never overwritten
    old, new = before.splitlines(), fixed.read_text().splitlines()
    changed = [(a, b) for a, b in zip(old, new) if a != b]
    assert len(old) == len(new) and len(changed) == 1
    assert changed[0][1].startswith("  learning_rate:") and changed[0][1].endswith(
        "# copied from a paper that used SGD"
    )
    assert "-  learning_rate: 3.0" in result.stderr and "+  learning_rate:" in result.stderr  # the diff
    again = invoke("diagnose", spec, "--set", f"config_path={fixed}", "--format", "json")
    assert again.exit_code == 0, again.stdout
    assert yaml.safe_load(fixed.read_text())["optim"]["learning_rate"] < 3.0


def test_input_config_is_overwritten_only_with_in_place(config_copy):
    spec = f"{SPECS}/config_spec.py:build"
    refused = invoke(
        "diagnose",
        spec,
        "--set",
        f"config_path={config_copy}",
        "--config",
        config_copy,
        "--write-fixed",
        config_copy,
        "--quick",
    )
    assert refused.exit_code == 2 and "--in-place" in refused.stderr
    invoke("diagnose", spec, "--set", f"config_path={config_copy}", "--config", config_copy, "--in-place")
    assert yaml.safe_load(config_copy.read_text())["optim"]["learning_rate"] < 3.0
    assert "# copied from a paper that used SGD" in config_copy.read_text()


def test_write_fixed_needs_a_config():
    result = invoke("diagnose", "nandoctor.examples.healthy:build", "--write-fixed", "x.yaml")
    assert result.exit_code == 2 and "--config" in result.stderr


def test_missing_key_is_named_with_what_to_add(tmp_path, diagnose):
    built = DYNAMICS_CASES["adamw_diverges"].build()
    built["config"] = {"trainer": {"max_epochs": 3}}
    finding = diagnose(built)["findings"][0]
    assert finding["fix"]["config"] == {"lr": finding["fix"]["config"]["lr"]}
    assert "no key for lr found in your config" in finding["fix"]["advice"]


def test_explain_lists_and_explains_every_code():
    listing = invoke("explain").stdout
    for code in DETECTED:
        assert code in listing
        text = invoke("explain", code).stdout
        assert all(part in text for part in ("What it means:", "Why it breaks:", "Example:", "Fix:"))
    unknown = invoke("explain", "nan_everywhere")
    assert unknown.exit_code == 2 and "unknown code" in unknown.stderr


def test_contract_codes_match_the_shared_contract():
    contract = Path(__file__).parents[2] / "shared" / "CONTRACT.md"
    if not contract.exists():
        pytest.skip("shared/CONTRACT.md is not beside this checkout")
    section = contract.read_text().split("### Root-cause codes", 1)[1].split("\n## ", 1)[0]
    table = [line.split("|")[1].strip().strip("`") for line in section.splitlines() if line.startswith("| `")]
    assert set(table) == set(CONTRACT_CODES)
    assert set(DETECTED) <= set(CODES)


def test_every_code_has_a_fixture_that_raises_it_and_a_twin():
    from tests.fixtures.ranks import RANK_CASES  # run under torchrun by test_distributed.py

    covered = {case.code for case in {**all_cases(), **RANK_CASES}.values()}
    assert set(DETECTED) <= covered, set(DETECTED) - covered
    assert set(CODES) <= covered  # also the codes nandoctor added (forward_error, backward_error)


def test_smoke_exit_codes_and_budget(tmp_path):
    start = time.monotonic()
    healthy = invoke("smoke", "nandoctor.examples.healthy:build", "--budget", "60s")
    broken = invoke("smoke", "nandoctor.examples.small_vocab:build", "--budget", "60s")
    assert healthy.exit_code == 0 and healthy.stdout.startswith("nandoctor: healthy")
    assert broken.exit_code == 1 and "index_out_of_range" in broken.stdout
    assert len(broken.stdout.strip().splitlines()) == 1
    assert time.monotonic() - start < 60
    starved = invoke("smoke", "nandoctor.examples.healthy:build", "--budget", "0.0001s", "--format", "json")
    skipped = [r for r in json.loads(starved.stdout)["probes"].values() if "skipped" in r]
    assert skipped and all("budget" in r["skipped"] or "needs" in r["skipped"] for r in skipped)
    assert invoke("smoke", "nandoctor.examples.healthy:build", "--budget", "soon").exit_code == 2


def test_smoke_junit_is_xml_with_failures(tmp_path):
    out = tmp_path / "nandoctor.xml"
    result = invoke("smoke", "nandoctor.examples.log_softmax_nan:build", "--format", "junit", "--out", out)
    assert result.exit_code == 1
    suite = ElementTree.fromstring(out.read_text())
    assert suite.tag == "testsuite" and int(suite.get("failures")) == 1
    failure = suite.find(".//failure")
    assert failure is not None and "head.log_probs" in failure.text


def test_markdown_report():
    result = invoke("diagnose", "nandoctor.examples.norm_grad_nan:build", "--format", "markdown", "--quick")
    assert result.stdout.startswith("## nandoctor: unhealthy")
    assert "| 1 |" in result.stdout and "`loss_component_nonfinite`" in result.stdout and "**Fix:**" in result.stdout
