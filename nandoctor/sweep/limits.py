"""The sweep's own settings: its grid, its plan, and the cut-offs that judge one run.

Declared here, beside the code that reads them (``grid``, ``plan``, ``training``); the dynamics
probe reads some of them too, as anything above the sweep may.
"""

from __future__ import annotations

from nandoctor.findings import Setting

SETTINGS = (
    Setting(
        "sweep_steps",
        32,
        "LR sweep (diagnose and lr-sweep): steps for the rates that reach the end; every rate runs a quarter of them",
    ),
    Setting(
        "sweep_long_factor",
        4,
        "... the last rung: the best rate after sweep_steps and the next lower one train this many times as "
        "long, and the recommendation is the best of them there (short runs favour high rates); 0: off",
        minimum=0,
    ),
    Setting("sweep_decades_down", 2, "... the first grid: half-decade rates from user_lr / 10**down ...", minimum=0),
    Setting(
        "sweep_decades_up", 2, "... to user_lr * 10**up; it grows while the best rate is on an edge ...", minimum=0
    ),
    Setting("sweep_max_decades", 6, "... up to this many decades from user_lr either way"),
    Setting(
        "sweep_plan_s",
        30.0,
        "... planned to take about this many seconds: steps per rate, rates continued and the grid shrink "
        "for a model whose counted FLOPs per step would not fit at the assumed speed below",
    ),
    Setting(
        "sweep_cpu_gflops",
        100.0,
        "... the assumed training speed on a CPU, GFLOP/s (the plan is the same on every run)",
    ),
    Setting("sweep_gpu_gflops", 20000.0, "... and on a GPU"),
    Setting(
        "sweep_stream_batches",
        64,
        "... training batches read from data and cached (the same sequence for every rate), then repeated",
    ),
    Setting(
        "sweep_rank_batches",
        0,
        "each sweep step accumulates this many batches (0: under torchrun the world size, the batch "
        "DDP's averaged gradient is for, and 1 in one process; 1: one batch)",
    ),
    Setting(
        "tie_tolerance",
        0.03,
        "recommendation: rates whose held-out loss is within this share of the best "
        "rate's fall from the start tie; the largest wins",
        minimum=0,
    ),
    Setting("learns_drop", 0.05, "a run learns when its held-out loss falls by at least this share of the start"),
    Setting(
        "learns_confidence",
        2.0,
        "... and that fall, averaged over slices of the held-out batches, is this many standard errors "
        "(a paired comparison with the start: noise on one batch is not learning)",
    ),
    Setting(
        "moves_drop",
        0.01,
        "a run moves the loss (no plateau, no rate too low) when its held-out loss falls by this share, "
        "with the confidence above",
    ),
    Setting("heldout_slices", 8, "... the held-out batches are cut into this many slices each", minimum=2),
    Setting("diverged_rise", 0.5, "a run diverged when its loss ends this share above its start"),
    Setting("spike_rise", 2.0, "a run is unstable when a step's loss rises this many times the start's scale above it"),
    Setting("grad_growth", 100.0, "... or its gradient norm grows this many times over the first step's"),
    Setting("blowup_rise", 10.0, "a run stops early once its loss is this many times the start's scale above it"),
    Setting(
        "collapse_spread",
        0.05,
        "a run collapsed when its outputs' spread across samples falls below this share of the start's",
    ),
    Setting(
        "sweep_read_every",
        8,
        "on a GPU, the sweep reads losses and gradient norms back once every this many steps "
        "(each read waits for the device; a diverging run is cut up to that many steps late)",
    ),
    Setting(
        "amp_skip_limit",
        20,
        "fp16: consecutive GradScaler-skipped steps (the scale calibrating) before a run counts as diverged",
    ),
    Setting(
        "guard_steps",
        40,
        "diagnose --steps: training steps of the user's own configuration "
        "(rate, optimizer, clipping, precision) before a NaN/Inf is looked for",
    ),
)
