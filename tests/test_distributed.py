"""nandoctor under ``torchrun --nproc_per_node=2`` on the CPU (gloo): one report, per-rank evidence.

Every run has a hard timeout: a deadlock fails the test instead of hanging CI.
"""

import json
import os
import re
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
    # a warning case exits 1 too; the twin has none. --quick: these detectors run before any training
    # (the healthy DDP and FSDP2 tests run the whole pipeline)
    strict = ("--format", "json", "--fail-on", "warning", "--quick")
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


def test_the_sweep_under_ddp_trains_on_the_effective_batch_and_says_so():
    code, stdout, stderr = torchrun("diagnose", f"{SPECS}:ddp", "--set", "lr=1e-5", "--format", "json")
    report = report_of(stdout)
    assert code == 1, stderr[-3000:]
    top = report["findings"][0]
    assert top["code"] == "lr_too_low" and top["where"]["rank"] is None  # every rank's sweep agrees
    assert top["evidence"]["sweep_batches_per_step"] == 2 and top["evidence"]["effective_batch_ranks"] == 2
    assert "2 of a rank's batches accumulated per step" in top["fix"]["advice"]
    assert report["probes"]["dynamics"]["batches"]["per_step"] == 2
    assert "effective batch of DDP over 2 ranks" in report["probes"]["distributed"]["batch"]


def test_lr_sweep_under_torchrun_accumulates_the_batches_prints_once_and_agrees_on_the_exit():
    code, stdout, stderr = torchrun("lr-sweep", f"{SPECS}:ddp", "--set", "lr=3e-3", "--format", "json")
    sweep = report_of(stdout)
    assert code == 0, stderr[-3000:]
    assert sweep["batches"]["per_step"] == 2 and [r["rank"] for r in sweep["ranks"]] == [0, 1]
    assert sweep["user_diverged"] is False and sweep["recommended_lr"] is not None
    code, stdout, stderr = torchrun("lr-sweep", f"{SPECS}:raises_on_rank_1", "--format", "json")
    error = report_of(stdout)
    assert "exitcode  : 2" in stderr and error["error"]["message"].startswith("rank 1: ")


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


# -- FSDP2 (fully_shard): diagnosed as its unsharded replica -------------------------------------------


def torchrun_script(script, *args, timeout=180):
    """``torchrun --nproc_per_node=2 SCRIPT ARGS`` (a training script): the finished process."""
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun is not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NANDOCTOR_RANK_TIMEOUT": "60", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script]
    try:
        return subprocess.run(
            command + [str(a) for a in args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as stuck:
        pytest.fail(f"torchrun did not finish in {timeout}s (a rank waits on another): {stuck.stderr}")


def test_a_healthy_fsdp2_model_is_one_healthy_report_that_names_the_replica():
    code, stdout, stderr = torchrun("diagnose", f"{SPECS}:fsdp2_conv", "--format", "json", timeout=120)
    report = report_of(stdout)
    assert code == 0, stderr[-3000:]
    assert report["verdict"] == "healthy", [(f["code"], f["title"]) for f in report["findings"]]
    assert report["coverage"]["ranks"] == 2 and not report["coverage"]["probes_not_run"]
    assert report["probes"]["distributed"]["wrappers"] == ["FSDP2 fully_shard"]
    assert "one full copy of the weights on every rank" in report["probes"]["distributed"]["fsdp2"]


def test_a_bug_in_an_fsdp2_model_is_the_same_top_finding_as_in_one_process(diagnose):
    from tests.specs import ranks

    alone = diagnose(ranks.fsdp2_ids_beyond_vocab())  # no group: fully_shard is not applied
    code, stdout, stderr = torchrun("diagnose", f"{SPECS}:fsdp2_ids_beyond_vocab", "--format", "json", timeout=120)
    together = report_of(stdout)
    assert code == 1, stderr[-3000:]
    top, first = together["findings"][0], alone["findings"][0]
    assert (
        (top["code"], top["where"]["module"])
        == (first["code"], first["where"]["module"])
        == ("index_out_of_range", "embed")
    )
    assert top["where"]["rank"] is None  # both ranks' ids go beyond the vocabulary


def test_diagnose_from_python_leaves_the_users_fsdp2_model_sharded_and_training():
    done = torchrun_script("tests/specs/ranks_fsdp2_api.py", timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = sorted(
        (json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")), key=lambda r: r["rank"]
    )
    assert [line["rank"] for line in lines] == [0, 1]
    for line in lines:
        assert line["replica_plain"], line  # plain classes and tensors, the user's hook kept, the same outputs
        assert line["verdict"] == "healthy" and line["wrappers"] == ["FSDP2 fully_shard"], line
        assert line["unchanged"] and line["trained"], line  # DTensors, local shards, classes and hooks as before


def test_lr_sweep_and_scan_of_an_fsdp2_spec_end_with_one_exit_code_on_every_rank():
    code, stdout, stderr = torchrun("lr-sweep", f"{SPECS}:fsdp2_conv", "--steps", "4", "--format", "json", timeout=120)
    assert code == 0 and json.loads(stdout)["recommended_lr"] > 0, stderr[-3000:]
    code, stdout, stderr = torchrun("scan", f"{SPECS}:fsdp2_ids_beyond_vocab", "--format", "json", timeout=120)
    # the bad ids were found: every rank exits 1, after rank 0 printed (torchrun may stop a rank that
    # is still shutting down when the other has exited: that one shows SIGTERM, never another code)
    codes = [int(c) for c in re.findall(r"exitcode  : (-?\d+)", stderr)]
    assert code == 1 and 1 in codes and set(codes) <= {1, -15}, stderr[-3000:]
    assert json.loads(stdout)["findings"][0]["code"] == "index_out_of_range"


def test_guard_on_fsdp2_writes_each_ranks_shards_and_replay_joins_them(tmp_path):
    done = torchrun_script("tests/specs/ranks_fsdp2_train.py", tmp_path / "capture.pt")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 1 tripped {'reason': 'nonfinite_loss'" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["capture.rank0.pt", "capture.rank1.pt"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "nandoctor", "replay", str(tmp_path / "capture.rank1.pt"), "--trust-spec"]
    replay = subprocess.run(
        [*command, "--format", "json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert replay.returncode == 1, replay.stderr[-2000:]
    report = json.loads(replay.stdout)
    assert report["findings"][0]["code"] == "nonfinite_input" and report["replay"]["reproduced"]
    # step 2 re-run from the joined shards gives the loss the run recorded: the whole weights are right
    assert [s["step"] for s in report["replay"]["steps"]] == [2, 3] and report["replay"]["notes"] == []
    (tmp_path / "capture.rank0.pt").unlink()
    alone = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert alone.returncode == 2 and "capture.rank0.pt is not beside it" in alone.stderr, alone.stderr[-2000:]
    assert "Traceback" not in alone.stderr


def test_a_model_that_is_not_sharded_is_diagnosed_itself_not_a_replica():
    import torch
    from torch import nn

    from nandoctor.distributed import sharded
    from nandoctor.spec import validate
    from tests.specs import ranks

    model = ranks.mlp()
    setup = validate({"model": model, "data": ranks.blobs(seed=1), "loss": ranks.ce}, "<test>")
    assert not sharded(model) and setup.model is model and setup.wrappers == ()
    compiled = validate({"model": torch.compile(model), "data": ranks.blobs(seed=1)}, "<test>")
    assert compiled.model is model and "FSDP2 fully_shard" not in compiled.wrappers
    assert isinstance(setup.model[0], nn.Linear)


def test_the_replica_takes_off_fsdps_class_and_hooks_and_keeps_the_users():
    from torch import nn
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.fsdp._fully_shard._fsdp_state import FSDPState

    from nandoctor.distributed import _fsdp_owned, _unsharded_class

    sharded_linear = type("FSDPLinear", (FSDPModule, nn.Linear), {})  # the class fully_shard makes
    assert _unsharded_class(sharded_linear) is nn.Linear and _unsharded_class(nn.GRU) is nn.GRU
    assert _fsdp_owned(FSDPState()._pre_forward)  # FSDP's forward hooks are bound methods of its state
    assert not _fsdp_owned(lambda module, args: None) and not _fsdp_owned(print)


def _shard_record(local, shape, index, dim=0, ranks=2, placements="(Shard(dim=0),)"):
    from nandoctor.guard.capture import STRUCT

    return {
        STRUCT: "shard",
        "local": local,
        "shape": shape,
        "dim": dim,
        "replicated": False,
        "ranks": ranks,
        "index": index,
        "placements": placements,
    }


def _write_rank_captures(folder, window_starts=(2, 2), dim=0):
    """Two ranks' captures of an FSDP2 run as ``save_capture`` writes them: each holds its shards
    (``dim=None``: a layout replay cannot join, such as HSDP's two-dimensional mesh)."""
    import torch

    from nandoctor.guard.capture import FORMAT, VERSION

    weight = torch.arange(15.0).reshape(5, 3)  # 5 rows over 2 ranks: 3 and 2, as torch.chunk splits them
    pieces = torch.chunk(weight, 2, dim=dim or 0)
    for rank, (piece, start) in enumerate(zip(pieces, window_starts)):
        model = {"weight": _shard_record(piece, [5, 3], rank, dim=dim), "steps": torch.tensor(3)}
        optimizer = {"state": {0: {"exp_avg": _shard_record(piece * 0.1, [5, 3], rank, dim=dim)}}, "param_groups": []}
        payload = {
            "format": FORMAT,
            "version": VERSION,
            "rank": rank,
            "step": 3,
            "window_start": start,
            "model": model,
            "optimizer": optimizer,
            "batches": [torch.zeros(2)],
            "sharded": {"ranks": 2},
        }
        torch.save(payload, folder / f"capture.rank{rank}.pt")
    return weight


def test_replay_joins_the_ranks_shards_and_refuses_what_it_cannot_join(tmp_path):
    import torch

    from nandoctor.errors import UsageError
    from nandoctor.guard.capture import load_capture, unsharded

    weight = _write_rank_captures(tmp_path)
    path = tmp_path / "capture.rank1.pt"
    joined = unsharded(path, load_capture(path))
    assert torch.equal(joined["model"]["weight"], weight) and joined["model"]["steps"].item() == 3
    assert torch.allclose(joined["optimizer"]["state"][0]["exp_avg"], weight * 0.1) and joined["sharded"] is None
    plain = {"format": "nandoctor-capture", "model": {"w": torch.ones(1)}}
    assert unsharded(path, plain) is plain  # a capture of an unsharded model is as it was
    _write_rank_captures(tmp_path, window_starts=(2, 4))
    with pytest.raises(UsageError, match="start at different steps"):
        unsharded(path, load_capture(path))
    _write_rank_captures(tmp_path, dim=None)
    with pytest.raises(UsageError, match="one-dimensional FSDP2 shards only"):
        unsharded(path, load_capture(path))
    (tmp_path / "capture.rank0.pt").unlink()
    with pytest.raises(UsageError, match="capture.rank0.pt is not beside it"):
        unsharded(path, load_capture(path))


def test_an_fsdp2_model_with_no_whole_on_every_rank_is_one_usage_error_on_every_rank():
    code, stdout, stderr = torchrun("diagnose", f"{SPECS}:fsdp2_on_a_sub_mesh", "--format", "json", timeout=120)
    error = report_of(stdout)
    assert code != 0 and "exitcode  : 2" in stderr, stderr[-3000:]  # torchrun exits 1 when a rank fails
    assert error["verdict"] == "error" and error["error"]["kind"] == "usage"
    assert "sharded over 1 of the 2 ranks" in error["error"]["message"]
    said = [line.split("error: ", 1)[1] for line in stderr.splitlines() if "] nandoctor: error: " in line]
    assert len(said) == 2 and said[0] == said[1], stderr[-3000:]  # both ranks stop, with the same one line


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


def test_a_syncbatchnorm_model_is_probed_with_per_rank_statistics_and_put_back():
    code, stdout, stderr = torchrun("diagnose", f"{SPECS}:syncbn_mlp", "--format", "json")
    report = report_of(stdout)
    assert code == 0 and report["verdict"] == "healthy", [(f["code"], f["title"]) for f in report["findings"]]
    assert report["probes"]["sync_batchnorm"]["ran_per_rank"] == ["1"]
    import torch

    from tests.specs import ranks

    model = ranks.syncbn_mlp()["model"]  # one process: the local forward is only a run's
    assert isinstance(model[1], torch.nn.SyncBatchNorm) and "forward" not in vars(model[1])
