"""Runs that do not learn (issue 17): never healthy, the rate far too low found upwards, early
oscillation judged at the end, rate fixes verified by the sweep's own runs, noise is not learning."""

import torch

from nandoctor.probes.dynamics import DynamicsProbe
from nandoctor.ranking import rank
from nandoctor.settings import Settings
from nandoctor.sweep.training import fall_t
from tests.fixtures import learning as fx
from tests.test_dynamics import dynamics_only


def _run(build, **settings):
    """The dynamics probe alone; no wall-clock budget, so a loaded machine does not drop rates."""
    torch.manual_seed(0)
    return dynamics_only(build(), **{"sweep_budget_s": 1e9, **settings})


def test_sgd_four_decades_too_low_grows_the_grid_upwards_and_names_the_rate_that_trains():
    findings, raw, _ = _run(fx.cnn_sgd)
    assert [f["code"] for f in findings] == ["lr_too_low"], findings
    assert any("no rate lowered the held-out loss" in step for step in raw["grid_extended"])
    best = raw["recommended_lr"]
    assert best >= 1e-3  # four decades above the user's 1e-7
    fix = findings[0]["fix"]
    assert fix["config"] == {"optim.lr": best}
    verified = fix["verified"]
    assert verified["ok"] and verified["after"] < verified["before"] and verified["steps"] == raw["checkpoints"][-1]


def test_labels_with_no_signal_are_critical_when_no_rate_learns():
    for build in (fx.gru_permuted_within_batch, fx.gru_misaligned_split, fx.gru_random_labels):
        findings, raw, _ = _run(build)
        assert raw["recommended_lr"] is None and raw["no_rate_moved"], raw["runs"]
        assert [(f["code"], f["severity"]) for f in findings] == [("loss_plateau", "critical")], findings
        assert raw["control"]["signal"] is False


def test_early_oscillation_is_judged_where_the_run_ends():
    """Full-batch SGD at lr 1: the loss climbs to several times its start, then ends far below it."""
    findings, raw, _ = _run(fx.logistic_full_batch)
    user = next(r for r in raw["runs"] if r["lr"] == 1.0)
    assert max(user["losses"][:10]) > 2 * user["initial_loss"]  # it really oscillates early
    assert user["heldout_final"] < 0.5 * user["heldout_initial"]
    assert user["verdict"] == "learns" and user["cut"] is None
    assert not any(f["severity"] == "critical" for f in findings), findings


def test_a_slow_steady_learner_a_smoothed_loss_and_a_frozen_backbone_stay_clean():
    for build in (fx.slow_regression, fx.gru_label_smoothing, fx.frozen_backbone_head):
        findings, raw, _ = _run(build)
        assert not [f for f in findings if f["severity"] != "info"], (build.__name__, findings)
        assert raw["no_rate_moved"] is False


def test_no_rate_moving_without_a_measured_cause_is_critical_with_the_table():
    """Every parameter frozen but a bias the loss ignores: nothing the rate can do, no labels to blame."""

    def frozen():
        setup = fx.frozen_backbone_head()
        for p in setup["model"].head.parameters():
            p.requires_grad_(False)
        setup["model"].head.bias.requires_grad_(True)
        setup["loss"] = lambda m, b: m(b[0]).sum() * 0 + torch.nn.functional.cross_entropy(m(b[0]).detach(), b[1])
        return setup

    findings, raw, _ = _run(frozen)
    assert raw["no_rate_moved"]
    plateau = [f for f in findings if f["code"] == "loss_plateau"]
    assert plateau and plateau[0]["severity"] == "critical", findings


def test_a_generic_plateau_folds_under_a_measured_cause_but_not_under_a_note():
    from nandoctor.findings import Finding, Severity

    plateau = Finding("loss_plateau", Severity.CRITICAL, "nothing moved", evidence={"no_rate_moved": True})
    cause = Finding("no_gradient_path", Severity.WARNING, "cut graph")
    note = Finding("dead_units", Severity.INFO, "a few dead units")
    assert [f.code for f in rank([plateau, cause])] == ["no_gradient_path"]
    assert rank([plateau, cause])[0].severity == Severity.CRITICAL
    assert [f.code for f in rank([note, plateau])] == ["loss_plateau", "dead_units"]
    assert any(rule.symptom == "loss_plateau" for rule in DynamicsProbe.folds)


def test_a_paired_fall_across_slices_tells_noise_from_learning():
    before = [1.0, 1.2, 0.9, 1.1, 1.0, 1.05, 0.95, 1.1]
    noisy = [b + d for b, d in zip(before, (-0.3, 0.25, -0.2, 0.3, -0.25, 0.2, -0.3, 0.1))]  # mean -0.025
    steady = [b * 0.9 for b in before]
    assert fall_t(before, noisy) < Settings().learns_confidence
    assert fall_t(before, steady) > Settings().learns_confidence
    assert fall_t(before[:3], steady[:3]) is None  # too few slices to judge


def test_a_rate_that_does_not_move_the_loss_at_all_is_critical(diagnose):
    top = diagnose(fx.cnn_sgd())["findings"][0]  # SGD four decades low: the run never trains as configured
    assert top["code"] == "lr_too_low" and top["severity"] == "critical", top["title"]
    start, mine = top["evidence"]["heldout_initial"], top["evidence"]["user_heldout"]
    assert abs(start - mine) < 0.01 * abs(start)


def test_one_output_for_every_input_while_the_held_out_loss_falls_is_a_phase_not_a_collapse():
    from nandoctor.sweep.training import COLLAPSED, LEARNS, TrainRun, classify

    def run_ending_at(heldout):
        run = TrainRun(lr=1.0, clip=None, steps=8)
        run.losses, run.grad_norms = [5.0, 4.6, 4.4, 4.3, 4.2, 4.1, 4.1, 4.0], [1.0] * 8
        run.initial_loss, run.heldout_initial, run.spread_initial, run.heldout_batches = 5.0, 5.0, 1.0, 1
        run.heldout[8], run.spread[8] = heldout, 0.01  # one output for every input, after 8 steps
        return run

    assert classify(run_ending_at(4.0), Settings()) == LEARNS  # token frequencies: the loss fell
    assert classify(run_ending_at(5.0), Settings()) == COLLAPSED  # the same single output, no fall
