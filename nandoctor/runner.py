"""Run the probes over one run context: load spec -> probes (plain data) -> rank -> report."""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any, Iterator

from nandoctor import __version__
from nandoctor.batches import read_batches, to_device
from nandoctor.context import RunContext
from nandoctor.errors import UsageError
from nandoctor.probes import PROBES
from nandoctor.ranking import rank, verdict
from nandoctor.settings import Settings
from nandoctor.spec import Setup
from nandoctor.state import preserved_everything


def select_probes(only: list[str] | None, skip: list[str] | None) -> list[Any]:
    known = {probe.name: probe for probe in PROBES}
    for name in (only or []) + (skip or []):
        if name not in known:
            raise UsageError(f"unknown probe {name!r} (probes: {', '.join(known)})")
    chosen = [p for p in PROBES if (not only or p.name in only) and p.name not in (skip or [])]
    return sorted(chosen, key=lambda p: p.order)


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


@contextmanager
def open_context(setup: Setup, settings: Settings) -> Iterator[RunContext]:
    """The run context: the model on its device and the first batches read once, moved there."""
    with on_device(setup.model, setup.device):
        batches = [to_device(b, setup.device) for b in read_batches(setup.data, settings.batches)]
        yield RunContext(setup=setup, batches=batches, settings=settings)


def run_probes(setup: Setup, settings: Settings, probes: list[Any],
               progress: Callable[[str], None] = _say, debug: bool = False,
               budget_s: float | None = None) -> dict[str, Any]:
    """Every chosen probe in order, each inside a full state snapshot; returns report parts.

    With ``budget_s``, a probe that would start after the budget is spent is skipped.
    """
    import time

    import torch

    findings, raw = [], {}
    start = time.monotonic()
    with open_context(setup, settings) as ctx:
        for number, probe_class in enumerate(probes, 1):
            probe = probe_class()
            missing = [fact for fact in probe.requires if not ctx.facts.get(fact, False)]
            if missing:
                raw[probe.name] = {"skipped": f"needs {', '.join(missing)}"}
                continue
            elapsed = time.monotonic() - start
            if budget_s is not None and elapsed > budget_s:
                raw[probe.name] = {"skipped": f"needs time (the {budget_s:g}s budget was spent)"}
                continue
            progress(f"nandoctor: [{number}/{len(probes)}] {probe.name} ({elapsed:.1f}s)")
            with preserved_everything(setup.model):
                torch.manual_seed(settings.seed)
                try:
                    result = probe.run(ctx)
                except UsageError:
                    raise
                except Exception as exc:  # a probe's own failure must not hide the others' findings
                    if debug:
                        raise
                    raw[probe.name] = {"error": f"{type(exc).__name__}: {exc}"}
                    progress(f"nandoctor: probe {probe.name} failed: {type(exc).__name__}: {exc}")
                    continue
            findings.extend(result.findings)
            raw[probe.name] = result.raw
            ctx.facts.update(result.facts)
    return {"findings": rank(findings), "probes": raw}


def build_report(spec: str, parts: dict[str, Any]) -> dict[str, Any]:
    """The JSON report of CONTRACT.md §2."""
    findings = parts["findings"]
    return {
        "nandoctor_version": __version__,
        "spec": spec,
        "verdict": verdict(findings),
        "findings": [f.to_dict() for f in findings],
        "probes": parts["probes"],
    }
