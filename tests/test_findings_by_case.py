"""Every case: the broken setup's top finding has the right code and place; its twin is healthy."""

import json

import pytest

from nandoctor.codes import CODES
from nandoctor.probes import PROBES
from nandoctor.render.common import render_json
from nandoctor.render.text import render_text
from tests.fixtures import all_cases
from tests.fixtures.models import CASES

ALL = all_cases()


@pytest.mark.parametrize("name", sorted(ALL))
def test_bad_setup_ranks_its_cause_first(name, diagnose):
    case = ALL[name]
    report = diagnose(case.build())
    assert report["verdict"] == "unhealthy"
    top = report["findings"][0]
    assert top["code"] == case.code, [(f["code"], f["severity"], f["where"]) for f in report["findings"]]
    assert {key: top["where"][key] for key in case.where} == case.where


@pytest.mark.parametrize("name", sorted(ALL))
def test_repaired_twin_is_healthy(name, diagnose):
    report = diagnose(ALL[name].twin())
    assert report["verdict"] == "healthy", [(f["code"], f["title"]) for f in report["findings"]]


@pytest.mark.parametrize("name", sorted(CASES))
def test_report_is_contract_shaped_plain_data(name, diagnose):
    report = diagnose(CASES[name].build())
    parsed = json.loads(render_json(report))  # strict JSON: NaN/Inf become strings
    assert set(parsed) == {"nandoctor_version", "spec", "verdict", "findings", "coverage", "probes"}
    assert set(parsed["coverage"]) == {"batches_checked", "batches_total", "probes_run", "probes_not_run", "ranks"}
    for finding in parsed["findings"]:
        assert finding["code"] in CODES
        assert finding["severity"] in ("critical", "warning", "info")
        assert set(finding["where"]) == {
            "module",
            "component",
            "feature",
            "parameter",
            "op",
            "source",
            "batch",
            "sample",
            "rank",
        }
        assert set(finding["fix"]) - {"verified"} == {"config", "advice"}  # verified: only when re-run
        if "verified" in finding["fix"]:
            assert set(finding["fix"]["verified"]) == {"steps", "before", "after", "ok"}
    assert render_text(report).startswith("nandoctor ")


def test_nan_activations_do_not_also_report_nan_gradients(diagnose):
    report = diagnose(CASES["pool_div_zero"].build())
    codes = [f["code"] for f in report["findings"]]
    assert codes == ["forward_nonfinite"]
    assert report["probes"]["backward"] == {"skipped": "needs forward_ok"}


def test_forward_evidence_has_ranges_and_counts(diagnose):
    finding = diagnose(CASES["pool_div_zero"].build())["findings"][0]
    evidence = finding["evidence"]
    assert evidence["module_type"] == "MaskedMeanPool"
    assert evidence["nan"] > 0 and evidence["numel"] > 0
    assert evidence["input_min"] < evidence["input_max"]


def test_backward_names_the_op(diagnose):
    report = diagnose(CASES["pairwise_sqrt"].build(), probes=[p for p in PROBES if p.name != "components"])
    finding = report["findings"][0]
    assert finding["code"] == "backward_nonfinite" and finding["where"]["module"] == ""
    assert finding["evidence"]["op"] == "SqrtBackward0"
    assert "eps" in finding["fix"]["advice"]


def test_component_nan_gradient_names_component_and_op_and_folds_backward(diagnose):
    finding = diagnose(CASES["pairwise_sqrt"].build())["findings"][0]
    assert finding["evidence"]["op"] == "SqrtBackward0" and finding["evidence"]["in"] == "gradient"
    assert [e["code"] for e in finding["evidence"]["explains"]] == ["backward_nonfinite"]


def test_embedding_evidence_has_the_id_range(diagnose):
    evidence = diagnose(CASES["sensor_vocab"].build())["findings"][0]["evidence"]
    assert evidence["num_embeddings"] == 5000
    assert evidence["max_id"] >= 5000
    assert evidence["out_of_range"] > 0


def test_gradient_table_lists_parameters_by_norm(diagnose):
    report = diagnose(CASES["target_scale"].build())
    top = report["probes"]["gradients"]["top"]
    norms = [row["grad_norm"] for row in top]
    assert norms == sorted(norms, reverse=True)
    assert report["probes"]["gradients"]["global_norm"] > 1e3


def test_nonfinite_init_explains_the_nan_it_causes(diagnose):
    findings = diagnose(CASES["temperature_init"].build())["findings"]
    assert [f["code"] for f in findings] == ["nonfinite_init"]
    assert {e["code"] for e in findings[0]["evidence"]["explains"]} <= {"forward_nonfinite", "loss_component_nonfinite"}
