"""nandoctor under ``torchrun --nproc_per_node=2`` on the CPU (gloo): one report, per-rank evidence.

Every run has a hard timeout: a deadlock fails the test instead of hanging CI.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.ranks import RANK_CASES

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SPECS = "tests/specs/ranks.py"


def torchrun(*args, timeout=240, tmp_path=None):
    """``torchrun --nproc_per_node=2 -m nandoctor ARGS``: (exit code, stdout, stderr)."""
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun is not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NANDOCTOR_RANK_TIMEOUT": "60", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "nandoctor", *[str(a) for a in args]]
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as stuck:
        pytest.fail(f"torchrun did not finish in {timeout}s (a rank waits on another): {stuck.stderr}")
    return done.returncode, done.stdout, done.stderr


def report_of(stdout: str) -> dict:
    return json.loads(stdout)  # one JSON object: only rank 0 prints


def test_a_healthy_ddp_model_is_one_healthy_report_written_once(tmp_path):
    out = tmp_path / "report.json"
    code, stdout, stderr = torchrun("diagnose", f"{SPECS}:ddp", "--format", "json", "--out", out)
    report = report_of(stdout)
    assert code == 0, stderr[-3000:]
    assert report["verdict"] == "healthy", [(f["code"], f["title"]) for f in report["findings"]]
    assert report["coverage"]["ranks"] == 2 and report["coverage"]["batches_checked"] == 8
    assert report["probes"]["distributed"]["wrappers"] == ["DistributedDataParallel"]
    assert "[rank 1] nandoctor:" in stderr and "[rank 0] nandoctor:" in stderr
    assert json.loads(out.read_text()) == report


def test_a_nan_in_one_ranks_shard_names_that_rank():
    code, stdout, stderr = torchrun("diagnose", f"{SPECS}:ddp", "--set", "nan_on_rank=1", "--format", "json")
    report = report_of(stdout)
    top = report["findings"][0]
    assert code == 1, stderr[-3000:]
    assert top["code"] == "nonfinite_input" and top["where"]["rank"] == 1 and top["evidence"]["ranks"] == [1]
    assert top["where"]["feature"] == "0[2]" and top["evidence"]["nan"] == 1


def test_a_bug_found_in_one_process_is_the_same_top_finding_under_ddp(diagnose):
    from tests.specs import ranks

    alone = diagnose(ranks.ids_beyond_vocab())
    code, stdout, stderr = torchrun("diagnose", f"{SPECS}:ids_beyond_vocab", "--format", "json")
    together = report_of(stdout)
    assert code == 1, stderr[-3000:]
    assert together["findings"][0]["code"] == alone["findings"][0]["code"] == "index_out_of_range"
    assert together["findings"][0]["where"]["module"] == alone["findings"][0]["where"]["module"] == "embed"


@pytest.mark.parametrize("name", sorted(RANK_CASES))
def test_rank_cases_raise_their_code_and_their_twin_is_healthy(name):
    case = RANK_CASES[name]
    strict = ("--format", "json", "--fail-on", "warning")  # a warning case exits 1 too; the twin has none
    code, stdout, stderr = torchrun("diagnose", f"{SPECS}:{case.build.__name__}", *strict)
    top = report_of(stdout)["findings"][0]
    assert code == 1, stderr[-3000:]
    assert top["code"] == case.code and {k: top["where"][k] for k in case.where} == case.where
    code, stdout, stderr = torchrun("diagnose", f"{SPECS}:{case.twin.__name__}", *strict)
    assert code == 0 and report_of(stdout)["verdict"] == "healthy", stdout[:2000]


def test_a_build_that_raises_on_one_rank_stops_every_rank_with_one_error():
    code, stdout, stderr = torchrun("diagnose", f"{SPECS}:raises_on_rank_1", "--format", "json", "--quick")
    error = report_of(stdout)
    assert code != 0 and "exitcode  : 2" in stderr  # torchrun exits 1 when a rank fails; the ranks exit 2
    assert error["verdict"] == "error" and error["error"]["message"].startswith("rank 1: ")
    assert "no data shard for rank 1" in error["error"]["message"] and "Traceback" not in stderr.split("torch")[0]


def test_in_one_process_the_ranks_probe_is_not_chosen_and_where_rank_is_null(diagnose):
    from tests.specs import ranks

    report = diagnose(ranks.ddp(nan_on_rank=0))
    assert "ranks" not in report["coverage"]["probes_run"] and report["coverage"]["ranks"] == 1
    assert report["findings"][0]["where"]["rank"] is None


def test_guard_writes_one_capture_per_rank_that_replays_in_one_process(tmp_path):
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun is not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["tests/specs/ranks_train.py", str(tmp_path / "capture.pt")]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["capture.rank0.pt", "capture.rank1.pt"]
    # the rank whose own loss went NaN is where it started; the other saw it arrive in its gradients
    assert "rank 1 tripped {'reason': 'nonfinite_loss'" in done.stderr
    assert "rank 0 tripped {'reason': 'nonfinite_grad'" in done.stderr
    import torch

    capture = torch.load(tmp_path / "capture.rank1.pt", weights_only=False)
    assert capture["rank"] == 1 and not any(k.startswith("module.") for k in capture["model"])
    replay = subprocess.run(
        [sys.executable, "-m", "nandoctor", "replay", str(tmp_path / "capture.rank1.pt"), "--trust-spec"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert replay.returncode == 1 and "nonfinite_input" in replay.stdout, replay.stderr[-2000:]


def test_scan_splits_the_batches_across_ranks_and_lists_them_all_once():
    code, stdout, stderr = torchrun("scan", f"{SPECS}:whole_dataset", "--format", "json")
    result = json.loads(stdout)
    assert code != 0 and "exitcode  : 1" in stderr  # something was found: every rank exits 1
    assert result["ranks"] == 2 and result["batches_scanned"] == 6 and result["samples_scanned"] == 6 * 48
    (finding,) = result["findings"]
    assert finding["code"] == "nonfinite_input" and (finding["where"]["batch"], finding["where"]["sample"]) == (3, 5)


def test_parameters_ddp_would_wait_for_are_named_under_ddp_and_a_note_alone(diagnose):
    from tests.specs import ranks

    alone = diagnose(ranks.ddp_unused_head())  # one process, no DDP: a note
    note = next(f for f in alone["findings"] if f["code"] == "no_gradient_path")
    assert note["severity"] == "info" and note["where"]["module"] == "aux_head"
    code, stdout, stderr = torchrun("diagnose", f"{SPECS}:ddp_unused_head", "--format", "json")
    report = report_of(stdout)
    assert code == 0, stderr[-3000:]  # a warning: the default --fail-on critical passes
    top = report["findings"][0]
    assert top["code"] == "no_gradient_path" and top["severity"] == "warning", report["findings"]
    assert top["where"]["module"] == "aux_head" and top["evidence"]["ddp_find_unused"] is False
    assert "find_unused_parameters=True" in top["fix"]["advice"]
    code, stdout, _ = torchrun("diagnose", f"{SPECS}:ddp_unused_head", "--set", "find_unused=true", "--format", "json")
    allowed = report_of(stdout)
    assert all(f["severity"] == "info" for f in allowed["findings"] if f["code"] == "no_gradient_path")


def test_merged_rate_findings_say_the_rates_are_for_one_ranks_batch():
    from nandoctor.findings import Finding, Fix, Severity, Where
    from nandoctor.ranks import merge_findings

    rate = Finding("lr_too_low", Severity.WARNING, "lr 1e-05 is too low", Where(), {}, Fix(advice="Raise it."))
    dead = Finding("dead_units", Severity.WARNING, "dead", Where(module="body.1"), {}, Fix(advice="LeakyReLU."))
    merged = {f.code: f for f in merge_findings([[rate, dead], [rate, dead]])}
    assert merged["lr_too_low"].evidence["effective_batch_ranks"] == 2
    assert "DDP averages the gradients of 2" in merged["lr_too_low"].fix.advice
    assert merged["dead_units"] == dead  # only rate findings depend on the batch
    assert merge_findings([[rate]]) == [rate]  # one process: as it was


def test_batchnorm_statistics_of_two_images_per_rank_are_measured_as_noise_and_syncbn_is_the_fix():
    code, stdout, stderr = torchrun("diagnose", f"{SPECS}:bn_two_images_per_rank", "--format", "json", "--quick")
    report = report_of(stdout)
    assert code == 0, stderr[-3000:]  # a warning: the default --fail-on critical passes
    (finding,) = [f for f in report["findings"] if f["code"] == "batchnorm_small_batch"]
    evidence = finding["evidence"]
    where = finding["where"]
    assert finding["severity"] == "warning" and (where["module"], where["rank"]) == ("body.1", None)
    assert evidence["count_per_rank"] == 32 and evidence["samples_per_rank"] == 2 and evidence["world_size"] == 2
    assert evidence["sync_count"] == 64 and list(evidence["modules"]) == ["body.1"]  # body.4's statistics hold
    # measured, not counted: 32 values per channel are worth a few samples (the 4x4 positions move together);
    # pooling the 2 ranks (the control) shrinks the noise as a larger sample would
    assert evidence["effective_per_rank"] < 8 and evidence["effective_sync"] > 2 * evidence["effective_per_rank"]
    assert evidence["deviation"] > evidence["sync_deviation"]
    assert "SyncBatchNorm.convert_sync_batchnorm(model)" in finding["fix"]["advice"]
    body = report["probes"]["batchnorm_ranks"]["modules"]
    assert [m["module"] for m in body] == ["body.1", "body.4"] and body[1]["effective_per_rank"] > 8


def test_the_same_conv_model_with_groupnorm_is_healthy_under_ddp():
    code, stdout, stderr = torchrun("diagnose", f"{SPECS}:gn_two_images_per_rank", "--format", "json", "--quick")
    report = report_of(stdout)
    assert code == 0 and report["verdict"] == "healthy", report["findings"]
    assert "no training-mode BatchNorm" in report["probes"]["batchnorm_ranks"]["skipped"]


def test_a_batchnorm_model_in_one_process_says_nothing_about_ranks(diagnose):
    from tests.specs import ranks

    report = diagnose(ranks.bn_two_images_per_rank())
    assert "batchnorm_ranks" not in report["coverage"]["probes_run"] and "batchnorm_ranks" not in report["probes"]
    assert not [f for f in report["findings"] if f["code"] == "batchnorm_small_batch"]


def test_one_sample_per_rank_is_a_critical_batchnorm_finding_on_that_rank():
    """Training-mode BatchNorm raises on one value per channel: the forward error it causes on rank 1 is explained."""
    code, stdout, stderr = torchrun("diagnose", f"{SPECS}:bn_one_sample_on_rank_1", "--format", "json", "--quick")
    report = report_of(stdout)
    assert code == 1, stderr[-3000:]
    (top,) = report["findings"]  # rank 1's forward_error at the same module is folded under it
    assert (top["code"], top["severity"], top["where"]["module"], top["where"]["rank"]) == (
        "batchnorm_small_batch",
        "critical",
        "1",
        1,
    )
    assert top["evidence"]["ranks_with_one_value"] == [1] and top["evidence"]["sync_count"] == 65
    assert "drop_last=True" in top["fix"]["advice"]
