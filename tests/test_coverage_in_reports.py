"""What a report rests on is said in every format: probes that did not run, batches checked.

A run that skipped or lost a probe is never "healthy"; a requested probe brings the probes it
needs; folding a symptom under its cause never lowers the severity.
"""

from __future__ import annotations

import json
from xml.etree import ElementTree

import pytest
from typer.testing import CliRunner

from nandoctor.cli import app
from nandoctor.findings import Finding, Severity, Where
from nandoctor.ranking import rank, verdict
from nandoctor.render.markdown import render_markdown
from nandoctor.render.text import render_text

runner = CliRunner()
HEALTHY = "nandoctor.examples.healthy:build"


@pytest.mark.parametrize("probe", ["gradients", "backward", "activations", "components", "dynamics"])
def test_a_requested_probe_runs_with_what_it_needs(probe):
    result = runner.invoke(app, ["diagnose", HEALTHY, "--probe", probe, "--format", "json"])
    report = json.loads(result.stdout)
    assert probe in report["coverage"]["probes_run"], report["probes"][probe]
    assert not str(report["probes"][probe].get("skipped", "")).startswith("needs")  # not for want of facts
    assert report["verdict"] == "healthy" and result.exit_code == 0


def test_a_starved_budget_is_incomplete_in_every_format(tmp_path):
    results = {
        fmt: runner.invoke(app, ["smoke", HEALTHY, "--budget", "0.0001s", "--format", fmt])
        for fmt in ("text", "json", "markdown", "junit")
    }
    assert {fmt: r.exit_code for fmt, r in results.items()} == dict.fromkeys(results, 3)
    report = json.loads(results["json"].stdout)
    assert report["verdict"] == "incomplete" and report["coverage"]["probes_not_run"]
    assert results["text"].stdout.startswith("nandoctor: incomplete:") and "not run:" in results["text"].stdout
    markdown = results["markdown"].stdout
    assert "every probe passed" not in markdown and "Not run" in markdown and "budget" in markdown
    suite = ElementTree.fromstring(results["junit"].stdout)
    skipped = {
        case.get("name"): case.find("skipped").get("message")
        for case in suite.iter("testcase")
        if case.find("skipped") is not None
    }
    assert set(report["coverage"]["probes_not_run"]) <= set(skipped)
    text = render_text(report)
    assert "NOT RUN" in text and "budget" in text


def _report(not_run: dict, checked: int = 4, total: int | None = 250) -> dict:
    return {
        "nandoctor_version": "x",
        "spec": "s:b",
        "verdict": "incomplete" if not_run else "healthy",
        "findings": [],
        "probes": {"inputs": {}, "forward": {}},
        "coverage": {
            "batches_checked": checked,
            "batches_total": total,
            "probes_run": ["inputs"],
            "probes_not_run": not_run,
        },
    }


def test_text_and_markdown_state_the_batches_checked_and_what_did_not_run():
    report = _report({"forward": "internal error in probe forward: KeyError: 'x' (run with --debug ...)"})
    for rendered in (render_text(report), render_markdown(report)):
        assert "checked 4 of 250 batches" in rendered.lower()
        assert "internal error in probe forward" in rendered
    assert "every probe passed" not in render_markdown(report)
    assert "checked the first 4 batches" in render_text(_report({}, total=None))
    assert "checked all 3 batches" in render_text(_report({}, checked=3, total=3))
    assert "every probe passed" in render_markdown(_report({}))


def test_the_cli_report_counts_the_loaders_batches():
    result = runner.invoke(app, ["diagnose", HEALTHY, "--quick", "--batches", "2"])
    assert "checked 2 of 4 batches" in result.stdout


def test_a_folded_symptom_keeps_its_severity():
    cause = Finding("nonfinite_init", Severity.INFO, "a what-if", Where(module="norm"))
    symptom = Finding("backward_nonfinite", Severity.CRITICAL, "NaN gradients", Where(module="norm"))
    ranked = rank([cause, symptom])
    assert [(f.code, f.severity) for f in ranked] == [("nonfinite_init", Severity.CRITICAL)]
    assert ranked[0].evidence["explains"][0]["code"] == "backward_nonfinite"
    assert verdict(ranked) == "unhealthy"
