"""Run the probes over one run context: load spec -> probes (plain data) -> rank -> report."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Iterator

from nandoctor.batches import check_feature_names, read_batches, to_device
from nandoctor.context import RunContext
from nandoctor.distributed import active, local_sync_batchnorm
from nandoctor.errors import InternalError, UsageError, describe
from nandoctor.probes import PROBES, with_dependencies
from nandoctor.ranking import rank, verdict
from nandoctor.results import Report
from nandoctor.settings import Settings
from nandoctor.spec import Setup
from nandoctor.state import ModelSnapshot, preserved_model, preserved_rng, preserved_torch_globals, run_snapshot


def select_probes(
    only: list[str] | None, skip: list[str] | None, progress: Callable[[str], None] | None = None
) -> list[Any]:
    """The chosen probes plus those that provide what they need (said on ``progress``), in run order."""
    known = {probe.name: probe for probe in PROBES}
    for name in (only or []) + (skip or []):
        if name not in known:
            raise UsageError(f"unknown probe {name!r} (probes: {', '.join(known)})")
    ranks = active()
    chosen = [
        p
        for p in PROBES
        if (not only or p.name in only) and p.name not in (skip or []) and (ranks or not p.needs_ranks)
    ]
    if not chosen:  # a run that checks nothing must not pass as healthy
        asked = f"the chosen probes ({', '.join(only)})" if only else "every probe"
        raise UsageError(
            f"no probe left to run: {asked} skipped (--skip/--quick skip {', '.join(dict.fromkeys(skip or []))})"
        )
    if not only:
        return sorted(chosen, key=lambda p: p.order)
    probes, added = with_dependencies(chosen)
    for name, needed_by in added.items():
        (progress or _say)(f"nandoctor: also running {name}: {needed_by} needs what it measures")
    return probes


@contextmanager
def on_device(model: Any, device: Any) -> Iterator[None]:
    """Move a model that sits wholly on another device there for the run, and back after."""
    devices = {t.device for t in list(model.parameters()) + list(model.buffers())}
    original = next(iter(devices)) if len(devices) == 1 else None
    move = original is not None and original != device and original.type != "meta"
    if move:
        model.to(device)
    try:
        yield
    finally:
        if move:
            model.to(original)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def batches_total(data: Any) -> int | None:
    """How many batches ``data`` holds, when it knows (a DataLoader or a list), else None."""
    try:
        return len(data)
    except Exception:  # generators, iterable datasets: no length
        return None


def _refuse_meta(model: Any) -> None:
    """A model wholly on the meta device has shapes but no values, and one built under inference mode
    has weights that cannot take gradients: nothing of it can be diagnosed.

    (Part of a model left on meta is a ``device_mismatch`` finding of the parameters probe.)
    """
    tensors = list(model.parameters()) + list(model.buffers())
    if tensors and all(tensor.is_meta for tensor in tensors):
        raise UsageError(
            "the model is on the meta device and holds no values: materialize it "
            "(model.to_empty(device=...), then load or initialize the weights) before returning it"
        )
    from torch.nn.parameter import is_lazy

    if any(not is_lazy(tensor) and tensor.is_inference() for tensor in tensors):
        raise UsageError(
            "the model was built under torch.inference_mode(): its weights cannot take gradients; "
            "build it outside that block (torch.no_grad() is fine)"
        )


def _initialize_lazy(ctx: RunContext, progress: Callable[[str], None]) -> None:
    """Give lazy modules (``LazyLinear``) their weights with the first batch, as a first step would.

    Nothing else of the model changes: the forward runs inside a snapshot and with the run's seed.
    If the forward raises, the forward probe reports it.
    """
    import torch
    from torch.nn.modules.lazy import LazyModuleMixin

    lazy = [
        name
        for name, module in ctx.model.named_modules()
        if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params()
    ]
    if not lazy:
        return
    with preserved_torch_globals(), preserved_rng(), preserved_model(ctx.model), torch.no_grad():
        torch.manual_seed(ctx.settings.seed)
        try:
            ctx.loss(ctx.batches[0])
        except (UsageError, KeyboardInterrupt):
            raise
        except Exception:  # the user's forward raised: the forward probe says where
            return
    progress(
        f"nandoctor: initialized the lazy modules {', '.join(repr(n) for n in lazy[:3])}"
        f"{' ...' if len(lazy) > 3 else ''} with the first batch (seed {ctx.settings.seed}); "
        "they keep those weights"
    )


@contextmanager
def open_context(setup: Setup, settings: Settings, progress: Callable[[str], None] = _say) -> Iterator[RunContext]:
    """The run context: the model on its device and the first batches read once, moved there."""
    _refuse_meta(setup.model)
    with on_device(setup.model, setup.device), local_sync_batchnorm(setup.model) as per_rank_norms:
        batches = [to_device(b, setup.device) for b in read_batches(setup.data, settings.batches)]
        check_feature_names(setup.feature_names, batches[0])
        ctx = RunContext(setup=setup, batches=batches, settings=settings)
        if per_rank_norms:
            ctx.shared["sync_batchnorm_per_rank"] = per_rank_norms
        _initialize_lazy(ctx, progress)
        yield ctx


def _run_one(probe: Any, ctx: RunContext, snapshot: ModelSnapshot, debug: bool) -> tuple[Any, str | None]:
    """(result, None) or (None, why it failed inside nandoctor); the model is restored after."""
    import torch

    with preserved_torch_globals(), preserved_rng():
        torch.manual_seed(ctx.settings.seed)
        try:
            return probe.run(ctx), None
        except (UsageError, KeyboardInterrupt):
            raise
        except Exception as exc:  # ours, not the user's: the user's crashes are findings inside probes
            if debug:
                raise
            cause = exc.__cause__ if isinstance(exc, InternalError) and exc.__cause__ else exc
            return None, f"internal error in probe {probe.name}: {describe(cause)} (run with --debug for the traceback)"
        finally:
            snapshot.restore()


def run_probes(
    setup: Setup,
    settings: Settings,
    probes: list[Any],
    progress: Callable[[str], None] = _say,
    debug: bool = False,
    budget_s: float | None = None,
) -> dict[str, Any]:
    """Every chosen probe in order, the model restored after each; returns report parts.

    One snapshot serves the run (restoring copies in place): a probe adds no copy of the weights.

    With ``budget_s``, a probe that would start after the budget is spent is skipped, and the
    run is incomplete; so is a run in which a probe failed inside nandoctor.
    """
    findings, raw, ran, not_run = [], {}, [], {}
    start = time.monotonic()
    facts: dict[Any, Any] = {}
    with open_context(setup, settings, progress) as ctx:
        snapshot = run_snapshot(ctx)
        for number, probe_class in enumerate(probes, 1):
            if probe_class.needs_ranks and not active():  # compares ranks: nothing to do in one process
                continue
            probe = probe_class()
            missing = [fact.value for fact in probe.requires if not facts.get(fact, False)]
            if missing:  # a finding above explains why (the forward is NaN, the backward raised)
                raw[probe.name] = {"skipped": f"needs {', '.join(missing)}"}
                continue
            elapsed = time.monotonic() - start
            # a probe that compares ranks runs on every rank or none: its collective must not wait alone
            if budget_s is not None and elapsed > budget_s and not probe_class.needs_ranks:
                raw[probe.name] = {"skipped": f"needs time (the {budget_s:g}s budget was spent)"}
                not_run[probe.name] = raw[probe.name]["skipped"]
                continue
            progress(f"nandoctor: [{number}/{len(probes)}] {probe.name} ({elapsed:.1f}s)")
            result, failure = _run_one(probe, ctx, snapshot, debug)
            if failure is not None:
                raw[probe.name] = {"error": failure}
                not_run[probe.name] = failure
                progress(f"nandoctor: {failure}")
                continue
            findings.extend(result.findings)
            raw[probe.name] = result.raw
            facts.update(result.facts)
            if result.incomplete:
                not_run[probe.name] = f"did not finish: {result.incomplete}"
            else:
                ran.append(probe.name)
        if "dynamics" in ran:  # training is allowed in this run: config fixes are re-run
            findings = _verify_fixes(ctx, findings, progress, debug)
        checked = len(ctx.batches)
        if "sync_batchnorm_per_rank" in ctx.shared:
            raw["sync_batchnorm"] = {
                "ran_per_rank": ctx.shared["sync_batchnorm_per_rank"][:20],
                "why": "a SyncBatchNorm all-reduces in every training forward; the probes ran it as a per-rank "
                "BatchNorm, so no rank waits on another (batchnorm_ranks measures what syncing would change)",
            }
    coverage = {
        "batches_checked": checked,
        "batches_total": batches_total(setup.data),
        "probes_run": ran,
        "probes_not_run": not_run,
        "ranks": 1,
    }
    return {"findings": rank(findings), "probes": raw, "coverage": coverage}


def _verify_fixes(ctx: RunContext, findings: list, progress: Callable[[str], None], debug: bool) -> list:
    """Each finding whose fix is a config change it can re-run (``evidence.rerun_fix``: loss weights, the
    precision) gets ``fix.verified``."""
    from nandoctor.sweep.verify import verify_fix

    kept = []
    for finding in findings:
        change = finding.evidence.get("rerun_fix")
        if not change or finding.fix.verified is not None:
            kept.append(finding)
            continue
        progress(f"nandoctor: re-running {ctx.settings.sweep_steps} steps with the fix {change}")
        try:
            with preserved_torch_globals(), preserved_rng():
                verified = verify_fix(ctx, change)
        except (UsageError, KeyboardInterrupt):
            raise
        except Exception as exc:  # the user's step under the fix (a bf16 op it lacks), or ours: no claim
            if debug:
                raise
            progress(f"nandoctor: the re-run with {change} stopped ({describe(exc)}): that fix stays unverified")
            verified = None
        if verified is None:
            kept.append(finding)
            continue
        kept.append(replace(finding, fix=replace(finding.fix, verified=verified)))
    return kept


def build_report(spec: str, parts: dict[str, Any], **sections: Any) -> Report:
    """The report of one run: its ranked findings, coverage and raw probe results (plus a command's sections)."""
    findings = parts["findings"]
    coverage = parts.get("coverage") or {
        "batches_checked": None,
        "batches_total": None,
        "probes_run": [],
        "probes_not_run": {},
        "ranks": 1,
    }
    return Report(
        spec=spec,
        verdict=verdict(findings, complete=not coverage["probes_not_run"]),
        findings=tuple(findings),
        coverage=coverage,
        probes=parts["probes"],
        sections=sections,
    )
