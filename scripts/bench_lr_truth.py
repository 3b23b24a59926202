"""Learning-rate ground truth: nandoctor's ``lr-sweep`` pick against long runs and today's LR finders.

For every setup in ``scripts/lr_truth_setups.py`` this script

1. computes the *truth*: a dense log grid of rates (3 per decade, 1e-5 .. 10, widened by a decade
   while the best rate sits on an edge), each trained ``--truth-steps`` (300) steps from the
   setup's initial weights with its own optimizer and clipping, for 2 seeds; a rate's score is the
   mean over seeds of the held-out loss at the end (eval mode), and ``inf`` when any seed diverged
   (its training loss turned non-finite, or its last 10 steps average more than 50% above the
   first step's loss; a held-out loss that rises while the training loss falls is overfitting,
   and keeps its real score). The *good
   band* is every grid rate whose score is within 10% of ``best + floor``, where ``floor`` is 1% of
   the initial held-out loss (so a loss that approaches 0 still gets a usable band):
   ``score <= best + 0.10 * (best + floor)``. Truth is cached in ``scripts/lr_truth_cache.json``,
   keyed by setup name and a hash of the setup's source (its build function and every helper it
   uses) and the protocol; ``--recompute`` forces it.
2. asks each tool for a rate: ``nandoctor lr-sweep SPEC --format json`` as a subprocess
   (``--nandoctor-cmd``, so any version can be benchmarked), torch-lr-finder's range test with the
   steepest-gradient suggestion that its ``plot(suggest_lr=True)`` computes, and Lightning's
   ``Tuner(trainer).lr_find(...).suggestion()`` on a LightningModule wrapping the same model and data;
   the user's own ``lr`` is listed as a baseline.
3. scores each pick on the truth grid at the nearest grid rate (log distance): in band or not,
   decades off the best rate, final loss at the pick over the best final loss, whether the pick
   diverges within the truth budget, and the tool's wall time.

    pip install -e '.[bench]'
    python scripts/bench_lr_truth.py                     # every setup (truth is cached after the first run)
    python scripts/bench_lr_truth.py --quick             # a smoke run: 3 setups, 100 steps, 1 seed
    python scripts/bench_lr_truth.py --only gru_clip --tools nandoctor
    python scripts/bench_lr_truth.py --nandoctor-cmd "python -m nandoctor" --nandoctor-pythonpath /path/to/other/checkout

Cost (issue 21): each tool's wall time and optimizer steps per setup, in the same run, and nandoctor's
time over torch-lr-finder's. No time includes a process start or imports: the anchors run in this
process with their libraries imported before the clock starts; nandoctor runs in a fresh process
whose clock starts after ``import torch, nandoctor.api, nandoctor.cli`` and a first optimizer (whose
construction imports ``torch._dynamo``, seconds, once per process; this process builds one too before
timing anything) (a ``PYTHON -m nandoctor``
command; any other ``--nandoctor-cmd`` gets its wall time less a measured ``import torch`` start,
flagged as estimated). Every tool's time includes building the setup.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import inspect
import io
import itertools
import json
import logging
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import lr_truth_setups  # noqa: E402

CACHE = HERE / "lr_truth_cache.json"
SETUPS_FILE = "scripts/lr_truth_setups.py"
QUICK_SETUPS = ["mlp_regression", "lstm_lm", "bn_mlp_sgd"]
BAND_TOLERANCE = 0.10
FLOOR_SHARE = 0.01  # of the initial held-out loss
TOOLS = ["user", "nandoctor", "lr_finder", "lightning"]


# --------------------------------------------------------------------------------------------
# setups


def build(name: str, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    return lr_truth_setups.SETUPS[name]()


def stream(data, steps: int) -> list[Any]:
    """The first ``steps`` training batches, reading ``data`` again from the start when it runs out."""
    out: list[Any] = []
    while len(out) < steps:
        before = len(out)
        out.extend(itertools.islice(iter(data), steps - len(out)))
        if len(out) == before:
            raise ValueError("the setup's data yields no batches")
    return out


def source_hash(name: str, protocol: dict[str, Any]) -> str:
    """Hash of the build function's source, every module-level helper it reaches, and the protocol."""
    module = lr_truth_setups
    seen: set[str] = set()
    parts: list[str] = []

    def visit(obj: Any) -> None:
        key = obj.__qualname__
        if key in seen:
            return
        seen.add(key)
        parts.append(inspect.getsource(obj))
        codes = (
            [f.__code__ for f in vars(obj).values() if inspect.isfunction(f)]
            if inspect.isclass(obj)
            else [obj.__code__]
        )
        names: set[str] = set()
        while codes:
            code = codes.pop()
            names |= set(code.co_names)
            codes += [c for c in code.co_consts if inspect.iscode(c)]
        for n in sorted(names):
            value = module.__dict__.get(n)
            if (inspect.isfunction(value) or inspect.isclass(value)) and value.__module__ == module.__name__:
                visit(value)
            elif isinstance(value, (int, float, str)) and not n.startswith("__"):
                parts.append(f"{n}={value!r}")

    visit(module.SETUPS[name])
    parts.append(json.dumps(protocol, sort_keys=True))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# truth


def log_grid(lo_exp: int, hi_exp: int, per_decade: int) -> list[float]:
    return [float(f"{10 ** (k / per_decade):.3g}") for k in range(lo_exp * per_decade, hi_exp * per_decade + 1)]


def heldout_loss(model, loss_fn, heldout) -> float:
    was = model.training
    model.eval()
    with torch.no_grad():
        value = float(torch.stack([loss_fn(model, b).detach().float() for b in heldout]).mean())
    model.train(was)
    return value


def train_rate(
    spec, state, batches, rate: float, seed: int, steps: int, checkpoints: tuple[int, ...]
) -> dict[str, Any]:
    """``steps`` steps at ``rate`` from ``state``; held-out loss at each checkpoint and at the end."""
    model, loss_fn = spec["model"], spec["loss"]
    model.load_state_dict(state)
    model.train()
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    factory = spec.get("optimizer") or (lambda ps, lr: torch.optim.AdamW(ps, lr=lr))
    optimizer = factory(params, rate)
    clip = spec.get("grad_clip")
    out: dict[str, Any] = {"at": {}, "nonfinite_step": None}
    train_losses: list[float] = []
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model, batches[step])
        value = float(loss.detach())
        train_losses.append(value)
        first = train_losses[0]
        if not math.isfinite(value) or value > 1e3 * max(abs(first), 1e-3):
            out["nonfinite_step"] = step  # hopeless: count as diverged
            break
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        if step + 1 in checkpoints:
            out["at"][str(step + 1)] = heldout_loss(model, loss_fn, spec["heldout"])
    final = heldout_loss(model, loss_fn, spec["heldout"]) if out["nonfinite_step"] is None else math.inf
    # diverged: the *training* loss blew up (non-finite, or its last 10 steps end 50% above the first
    # step's); a held-out loss that rises while the training loss falls is overfitting, scored as it is
    first, last = train_losses[0], sum(train_losses[-10:]) / len(train_losses[-10:])
    out["final"] = final
    out["train_end"] = last
    out["diverged"] = not math.isfinite(final) or not math.isfinite(last) or last > first + 0.5 * abs(first)
    return out


def compute_truth(name: str, protocol: dict[str, Any], say) -> dict[str, Any]:
    steps, seeds, per_decade = protocol["steps"], protocol["seeds"], protocol["per_decade"]
    lo, hi = protocol["lo_exp"], protocol["hi_exp"]
    checkpoints = tuple(c for c in (30, 100) if c < steps)
    per_seed = []
    for seed in range(seeds):
        spec = build(name, seed)
        batches = stream(spec["data"], steps)
        state = copy.deepcopy(spec["model"].state_dict())
        h0 = heldout_loss(spec["model"], spec["loss"], spec["heldout"])
        per_seed.append({"spec": spec, "batches": batches, "state": state, "h0": h0, "runs": {}})
    began = time.monotonic()

    def run_grid(rates: list[float]) -> None:
        for rate in rates:
            for s, entry in enumerate(per_seed):
                if rate not in entry["runs"]:
                    entry["runs"][rate] = train_rate(
                        entry["spec"], entry["state"], entry["batches"], rate, s, steps, checkpoints
                    )

    def table() -> dict[float, float]:
        scores = {}
        for rate in per_seed[0]["runs"]:
            runs = [e["runs"][rate] for e in per_seed]
            scores[rate] = math.inf if any(r["diverged"] for r in runs) else sum(r["final"] for r in runs) / len(runs)
        return scores

    run_grid(log_grid(lo, hi, per_decade))
    while True:  # widen by a decade while the best rate sits on an edge
        scores = table()
        rates = sorted(scores)
        best = min(rates, key=lambda r: scores[r])
        if best == rates[-1] and math.log10(rates[-1]) < protocol["max_exp"]:
            hi += 1
        elif best == rates[0] and math.log10(rates[0]) > protocol["min_exp"]:
            lo -= 1
        else:
            break
        say(f"  {name}: best rate {best:.3g} on the grid's edge, widening to 1e{lo}..1e{hi}")
        run_grid(log_grid(lo, hi, per_decade))
    for entry in per_seed:
        entry["spec"]["model"].load_state_dict(entry["state"])
    rows = []
    for rate in sorted(scores):
        runs = [e["runs"][rate] for e in per_seed]
        rows.append(
            {
                "lr": rate,
                "score": scores[rate],
                "finals": [r["final"] for r in runs],
                "diverged": [r["diverged"] for r in runs],
                "at": {c: _mean([r["at"].get(c, math.inf) for r in runs]) for c in map(str, checkpoints)},
            }
        )
    return {
        "grid": rows,
        "initial_heldout": _mean([e["h0"] for e in per_seed]),
        "seconds": time.monotonic() - began,
        "user_lr": per_seed[0]["spec"].get("lr", 1e-3),
        "protocol": protocol,
    }


def _mean(values: list[float]) -> float:
    return math.inf if any(not math.isfinite(v) for v in values) else sum(values) / len(values)


def band_of(truth: dict[str, Any]) -> dict[str, Any]:
    rows = truth["grid"]
    best = min(rows, key=lambda r: r["score"])
    floor = FLOOR_SHARE * truth["initial_heldout"]
    limit = best["score"] + BAND_TOLERANCE * (best["score"] + floor)
    inside = [r["lr"] for r in rows if r["score"] <= limit]
    rates = [r["lr"] for r in rows]
    i = j = rates.index(best["lr"])  # the contiguous run of in-band rates around the best
    while i > 0 and rates[i - 1] in inside:
        i -= 1
    while j + 1 < len(rates) and rates[j + 1] in inside:
        j += 1
    return {
        "best_lr": best["lr"],
        "best_loss": best["score"],
        "limit": limit,
        "in_band": inside,
        "low": rates[i],
        "high": rates[j],
        "gapped": len(inside) != j - i + 1,
        "on_edge": best["lr"] in (rates[0], rates[-1]),
    }


def nearest_row(truth: dict[str, Any], lr: float) -> dict[str, Any]:
    return min(truth["grid"], key=lambda r: abs(math.log10(r["lr"] / lr)))


def load_cache() -> dict[str, Any]:
    try:
        return json.loads(CACHE.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def save_cache(cache: dict[str, Any]) -> None:
    CACHE.write_text(json.dumps(cache, indent=1, sort_keys=True, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    raise TypeError(f"not JSON: {type(value).__name__}")


def _inf_safe(obj: Any) -> Any:
    """JSON has no inf: write it as the string "inf" (read back by _from_json)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "inf" if obj > 0 else ("-inf" if obj < 0 else "nan")
    if isinstance(obj, dict):
        return {k: _inf_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_inf_safe(v) for v in obj]
    return obj


def _from_json(obj: Any) -> Any:
    if obj in ("inf", "-inf", "nan"):
        return float(obj)
    if isinstance(obj, dict):
        return {k: _from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_json(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------
# the tools


# Run inside nandoctor's process: the interpreter, torch and nandoctor's command-line modules load first
# (process start, like the anchors' imports, which happen before their clocks start); the clock starts
# after them and stops at exit, written to the file named by NANDOCTOR_BENCH_TIMER.
TIMED_SHIM = """
import atexit, os, sys, time
import torch
import nandoctor.api, nandoctor.cli
torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # the first optimizer imports torch._dynamo (~3 s)
began = time.monotonic()
def _write_time():
    with open(os.environ["NANDOCTOR_BENCH_TIMER"], "w") as handle:
        handle.write(repr(time.monotonic() - began))
atexit.register(_write_time)
sys.argv = ["nandoctor"] + sys.argv[1:]
nandoctor.cli.main()
"""


def run_nandoctor(name: str, cmd: list[str], pythonpath: str | None, startup_s: float | None) -> dict[str, Any]:
    """``nandoctor lr-sweep`` in a fresh process. Its time excludes the process start: measured inside
    the process when ``cmd`` is ``PYTHON -m nandoctor``; otherwise the whole wall time less the
    ``import torch`` start measured once (flagged as estimated)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([pythonpath] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    inside = cmd[1:] == ["-m", "nandoctor"]
    args = ["lr-sweep", f"{SETUPS_FILE}:build_{name}", "--format", "json"]
    with tempfile.TemporaryDirectory() as tmp:
        timer = Path(tmp) / "seconds"
        env["NANDOCTOR_BENCH_TIMER"] = str(timer)
        argv = ([cmd[0], "-c", TIMED_SHIM] if inside else cmd) + args
        start = time.monotonic()
        proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.monotonic() - start
        measured = float(timer.read_text()) if inside and timer.exists() else None
    seconds = measured if measured is not None else max(wall - (startup_s or 0.0), 0.0)
    out: dict[str, Any] = {"seconds": seconds, "process_s": wall, "time_estimated": measured is None}
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"lr": None, **out, "error": f"exit {proc.returncode}: {tail}"}
    return {
        "lr": report.get("recommended_lr"),
        **out,
        "steps": report.get("steps_run"),
        "why": report.get("why"),
        "report": report,
    }


def run_lr_finder(name: str) -> dict[str, Any]:
    """torch-lr-finder as its README runs it: the optimizer at 1e-7, an exponential range test to
    100 over 100 iterations, then the steepest-gradient point that ``plot(suggest_lr=True)`` marks
    (``np.gradient`` of the smoothed losses, skip_start=10, skip_end=5)."""
    import numpy as np
    from torch_lr_finder import LRFinder, TrainDataLoaderIter

    class WholeBatch(TrainDataLoaderIter):
        def inputs_labels_from_batch(self, batch_data):
            return batch_data, None

    class LossModel(torch.nn.Module):
        def __init__(self, model, loss_fn):
            super().__init__()
            self.model, self.loss_fn = model, loss_fn

        def forward(self, batch):
            return self.loss_fn(self.model, batch)

    start = time.monotonic()
    spec = build(name, 0)
    params = [p for p in spec["model"].parameters() if p.requires_grad]
    optimizer = spec["optimizer"](params, 1e-7)
    if spec.get("grad_clip"):  # the library has no clipping option: clip before each step, as the user does

        def clip(*_):
            torch.nn.utils.clip_grad_norm_(params, spec["grad_clip"])

        optimizer.register_step_pre_hook(clip)
    finder = LRFinder(LossModel(spec["model"], spec["loss"]), optimizer, lambda out, _: out, device="cpu")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        finder.range_test(WholeBatch(spec["data"]), start_lr=1e-7, end_lr=100, num_iter=100)
    lrs, losses = finder.history["lr"][10:-5], finder.history["loss"][10:-5]
    if len(losses) < 2:
        return {
            "lr": None,
            "seconds": time.monotonic() - start,
            "steps": len(finder.history["lr"]),
            "error": f"range test stopped after {len(finder.history['lr'])} iterations",
        }
    pick = float(lrs[int(np.gradient(np.array(losses)).argmin())])
    return {
        "lr": pick,
        "seconds": time.monotonic() - start,
        "iterations": len(finder.history["lr"]),
        "steps": len(finder.history["lr"]),
        "stopped_at": finder.history["lr"][-1],
    }


def run_lightning(name: str) -> dict[str, Any]:
    """Lightning's ``Tuner(trainer).lr_find`` with its defaults (1e-8 .. 1, 100 steps, exponential,
    early stop at 4x the best loss) and ``.suggestion()`` (steepest descent, skip 10 / 1)."""
    import pytorch_lightning as pl
    from pytorch_lightning.tuner import Tuner

    class Module(pl.LightningModule):
        def __init__(self, spec):
            super().__init__()
            self.model = spec["model"]
            self.loss_fn, self.opt_factory, self.lr = spec["loss"], spec["optimizer"], spec.get("lr", 1e-3)

        def training_step(self, batch, batch_idx):
            return self.loss_fn(self.model, batch)

        def configure_optimizers(self):
            return self.opt_factory(self.parameters(), self.lr)

    for logger_name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(logger_name).setLevel(logging.ERROR)
    start = time.monotonic()
    spec = build(name, 0)
    with (
        tempfile.TemporaryDirectory() as root,
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=root,
            gradient_clip_val=spec.get("grad_clip"),
            max_epochs=1000,
        )
        finder = Tuner(trainer).lr_find(Module(spec), train_dataloaders=spec["data"])
        pick = finder.suggestion() if finder is not None else None
    return {
        "lr": float(pick) if pick is not None else None,
        "seconds": time.monotonic() - start,
        "iterations": len(finder.results["lr"]) if finder is not None else 0,
        "steps": len(finder.results["lr"]) if finder is not None else 0,
    }


# --------------------------------------------------------------------------------------------
# scoring and the report


def score_pick(truth: dict[str, Any], band: dict[str, Any], lr: float | None) -> dict[str, Any]:
    if lr is None or not (lr > 0 and math.isfinite(lr)):
        return {"lr": None, "in_band": False, "decades_off": None, "loss_ratio": None, "diverges": None}
    row = nearest_row(truth, lr)
    return {
        "lr": lr,
        "grid_lr": row["lr"],
        "in_band": row["lr"] in band["in_band"],
        "decades_off": math.log10(lr / band["best_lr"]),
        "loss_ratio": row["score"] / band["best_loss"],
        "diverges": any(row["diverged"]),
    }


def _g(value: float | None, fmt: str = ".3g") -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return "inf"
    return format(value, fmt)


def render(results: list[dict[str, Any]], tools: list[str], protocol: dict[str, Any], startup_s: float | None) -> str:
    from tabulate import tabulate

    lines = [
        f"Truth: {protocol['steps']} steps per rate, {protocol['seeds']} seed(s), {protocol['per_decade']} rates "
        f"per decade from 1e{protocol['lo_exp']} to 1e{protocol['hi_exp']} (widened while the best is on an edge); "
        f"score = mean held-out loss at the end, inf if any seed diverged; band = score <= best + "
        f"{BAND_TOLERANCE:.0%} x (best + {FLOOR_SHARE:.0%} of the initial held-out loss)",
        "",
    ]
    rows = []
    for res in results:
        t, b = res["truth"], res["band"]
        user = res["picks"]["user"]
        rows.append(
            [
                res["name"],
                _g(t["user_lr"]),
                _g(b["best_lr"]),
                f"{_g(b['low'])} .. {_g(b['high'])}"
                + (" (+gaps)" if b["gapped"] else "")
                + (" EDGE" if b["on_edge"] else ""),
                _g(b["best_loss"], ".4g"),
                _g(t["initial_heldout"], ".4g"),
                _g(user["loss_ratio"], ".3f"),
                f"{t['seconds']:.0f}" if t.get("seconds") is not None else "cached",
            ]
        )
    lines.append(
        tabulate(
            rows,
            headers=[
                "setup",
                "user lr",
                "best lr",
                "good band",
                "best loss",
                "initial loss",
                "user loss/best",
                "truth s",
            ],
            disable_numparse=True,
        )
    )
    lines.append("")
    rows = []
    for res in results:
        b = res["band"]
        for tool in tools:
            pick = res["picks"].get(tool)
            if pick is None:
                continue
            flags = []
            if pick.get("diverges"):
                flags.append("DIVERGES in truth budget")
            if pick.get("error"):
                flags.append(pick["error"][:60])
            rows.append(
                [
                    res["name"],
                    tool,
                    _g(pick["lr"]),
                    _g(pick.get("grid_lr")),
                    "yes" if pick["in_band"] else "NO",
                    _g(pick["decades_off"], "+.2f"),
                    _g(pick["loss_ratio"], ".3f"),
                    _g(pick.get("seconds"), ".1f"),
                    str(pick["steps"]) if pick.get("steps") is not None else "-",
                    "; ".join(flags),
                ]
            )
    lines.append(
        tabulate(
            rows,
            headers=[
                "setup",
                "tool",
                "pick",
                "grid rate",
                "in band",
                "decades off best",
                "loss/best",
                "wall s",
                "steps",
                "flags",
            ],
            disable_numparse=True,
        )
    )
    lines.append("")
    rows = []
    for tool in tools:
        picks = [r["picks"][tool] for r in results if tool in r["picks"]]
        if not picks:
            continue
        offs = [abs(p["decades_off"]) for p in picks if p["decades_off"] is not None]
        ratios = [p["loss_ratio"] for p in picks if p["loss_ratio"] is not None]
        finite = [x for x in ratios if math.isfinite(x)]
        times = [p["seconds"] for p in picks if p.get("seconds") is not None]
        steps = [p["steps"] for p in picks if p.get("steps") is not None]
        rows.append(
            [
                tool,
                f"{sum(p['in_band'] for p in picks)}/{len(picks)}",
                _g(sorted(offs)[len(offs) // 2] if offs else None, ".2f"),
                _g(math.exp(sum(map(math.log, finite)) / len(finite)) if finite else None, ".3f")
                + (f" (+{len(ratios) - len(finite)} inf)" if len(finite) < len(ratios) else ""),
                sum(bool(p.get("diverges")) for p in picks),
                sum(p["lr"] is None for p in picks),
                _g(sum(times) if times else None, ".1f"),
                str(sum(steps)) if steps else "-",
            ]
        )
    lines.append(
        tabulate(
            rows,
            headers=[
                "tool",
                "in band",
                "median |decades off|",
                "geomean loss/best",
                "diverging picks",
                "no pick",
                "total wall s",
                "total steps",
            ],
            disable_numparse=True,
        )
    )
    lines += ["", cost_table(results, tools)]
    if startup_s is not None:
        lines.append(
            f"\nstartup: a fresh `python -c 'import torch'` takes {startup_s:.1f}s; no tool's time includes its "
            "process start or imports (nandoctor's clock starts inside its process after `import nandoctor.api`)"
        )
    return "\n".join(lines)


def cost_table(results: list[dict[str, Any]], tools: list[str]) -> str:
    """Each tool's wall time and optimizer steps per setup, side by side, and nandoctor's time over
    torch-lr-finder's (all measured in the same run, process start and imports excluded)."""
    from tabulate import tabulate

    shown = [t for t in tools if t != "user"]
    rows, ratios = [], []
    for res in results:
        row = [res["name"]]
        for tool in shown:
            pick = res["picks"].get(tool) or {}
            seconds, steps = pick.get("seconds"), pick.get("steps")
            row.append(f"{_g(seconds, '.1f')} s / {steps if steps is not None else '-'}")
        ours, theirs = (res["picks"].get(t, {}).get("seconds") for t in ("nandoctor", "lr_finder"))
        ratio = ours / theirs if ours is not None and theirs else None
        if ratio is not None:
            ratios.append(ratio)
        row.append(_g(ratio, ".2f") + ("x" if ratio is not None else ""))
        rows.append(row)
    if ratios:
        geomean = math.exp(sum(map(math.log, ratios)) / len(ratios))
        rows.append(
            ["(all)"]
            + [""] * len(shown)
            + [f"geomean {geomean:.2f}x, max {max(ratios):.2f}x, <= 2x on {sum(r <= 2 for r in ratios)}/{len(ratios)}"]
        )
    headers = ["setup"] + [f"{t}: wall / steps" for t in shown] + ["nandoctor / lr_finder time"]
    return tabulate(rows, headers=headers, disable_numparse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], help="setup name(s), comma-separated or repeated")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 setups, 100 steps, 1 seed, 1e-4..1")
    parser.add_argument("--recompute", action="store_true", help="recompute the truth even when cached")
    parser.add_argument("--tools", default=",".join(TOOLS[1:]), help=f"comma-separated, of {', '.join(TOOLS[1:])}")
    parser.add_argument(
        "--nandoctor-cmd",
        default=f"{shlex.quote(sys.executable)} -m nandoctor",
        help="how to run nandoctor (default: this python -m nandoctor)",
    )
    parser.add_argument(
        "--nandoctor-pythonpath",
        default=str(ROOT),
        help="put this first on PYTHONPATH for nandoctor (default: this checkout); '' for none",
    )
    parser.add_argument("--truth-steps", type=int, default=None, help="steps per rate for the truth (default 300)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds for the truth (default 2)")
    parser.add_argument("--out", type=Path, default=None, help="write everything (truth, picks, nandoctor's JSON) here")
    args = parser.parse_args()

    torch.set_num_threads(1)
    say = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    protocol = (
        {"steps": 100, "seeds": 1, "per_decade": 3, "lo_exp": -4, "hi_exp": 0}
        if args.quick
        else {"steps": 300, "seeds": 2, "per_decade": 3, "lo_exp": -5, "hi_exp": 1}
    )
    protocol.update({"min_exp": -8, "max_exp": 2, "band": [BAND_TOLERANCE, FLOOR_SHARE], "version": 2})
    if args.truth_steps:
        protocol["steps"] = args.truth_steps
    if args.seeds:
        protocol["seeds"] = args.seeds
    names = [n for chunk in args.only for n in chunk.split(",") if n] or (
        QUICK_SETUPS if args.quick else list(lr_truth_setups.SETUPS)
    )
    unknown = [n for n in names if n not in lr_truth_setups.SETUPS]
    if unknown:
        parser.error(f"unknown setup(s) {', '.join(unknown)}; known: {', '.join(lr_truth_setups.SETUPS)}")
    tools = ["user"] + [t for t in args.tools.split(",") if t]
    bad = [t for t in tools if t not in TOOLS]
    if bad:
        parser.error(f"unknown tool(s) {', '.join(bad)}")
    nandoctor_cmd = shlex.split(args.nandoctor_cmd)

    startup_s = None
    if "nandoctor" in tools:
        start = time.monotonic()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        startup_s = time.monotonic() - start
        where = subprocess.run(
            nandoctor_cmd[:1]
            + (
                ["-c", "import nandoctor; print(nandoctor.__file__, nandoctor.__version__)"]
                if nandoctor_cmd[1:2] == ["-m"]
                else ["--help"]
            ),
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONPATH=args.nandoctor_pythonpath) if args.nandoctor_pythonpath else None,
        )
        say(
            f"nandoctor: {args.nandoctor_cmd} -> {where.stdout.strip().splitlines()[0] if where.stdout.strip() else '?'}"
        )

    # the first optimizer built in a process imports torch._dynamo (seconds): an import, paid here once
    # before any clock starts, as nandoctor's process pays it before its own
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    cache = load_cache()
    results = []
    for name in names:
        key = source_hash(name, protocol)
        entry = cache.get(name, {}).get(key)
        if entry is None or args.recompute:
            say(f"truth for {name}: computing ({protocol['steps']} steps x {protocol['seeds']} seed(s) per rate)")
            truth = compute_truth(name, protocol, say)
            cache = load_cache()  # another run may have written meanwhile
            cache.setdefault(name, {})[key] = _inf_safe(truth)
            save_cache(cache)
        else:
            truth = _from_json(entry)
            truth = dict(truth, seconds=None)
        band = band_of(truth)
        res = {"name": name, "truth": truth, "band": band, "picks": {"user": score_pick(truth, band, truth["user_lr"])}}
        for tool in tools[1:]:
            say(f"{name}: {tool}")
            try:
                raw = {
                    "nandoctor": lambda: run_nandoctor(
                        name, nandoctor_cmd, args.nandoctor_pythonpath or None, startup_s
                    ),
                    "lr_finder": lambda: run_lr_finder(name),
                    "lightning": lambda: run_lightning(name),
                }[tool]()
            except Exception as exc:  # a tool that fails is a result, not a crash of the benchmark
                raw = {"lr": None, "seconds": None, "error": f"{type(exc).__name__}: {exc}"}
            res["picks"][tool] = {**score_pick(truth, band, raw["lr"]), **{k: v for k, v in raw.items() if k != "lr"}}
        results.append(res)
        say(
            f"{name}: best {band['best_lr']:.3g}, band {band['low']:.3g}..{band['high']:.3g}; "
            + ", ".join(
                f"{t} {_g(res['picks'][t]['lr'])}{'' if res['picks'][t]['in_band'] else ' (out)'}" for t in tools
            )
        )
    print(render(results, tools, protocol, startup_s))
    if args.out:
        args.out.write_text(json.dumps(_inf_safe({"protocol": protocol, "results": results}), indent=1) + "\n")
        say(f"wrote {args.out}")


if __name__ == "__main__":
    main()
