"""One report from every rank's results: the same merge on every rank, so every rank agrees.

Each rank diagnoses its own batches. A finding every rank made is the run's (``where.rank`` is
None); a finding only some ranks made names the first of them in ``where.rank`` and lists them
all in ``evidence.ranks`` (a NaN in rank 1's shard, a rank whose inputs are scaled differently).
A rank that failed (its build raised, its data was unreadable) fails the run on every rank with
the same message, instead of leaving the others waiting.
"""

from __future__ import annotations

from dataclasses import astuple, replace
from typing import Any

from nandoctor.distributed import FSDP2, gather, world_size
from nandoctor.errors import InternalError, UsageError, describe
from nandoctor.findings import Finding
from nandoctor.ranking import rank


def on_every_rank(work: Any, local: bool = False) -> Any:
    """``work()`` on this rank. Under torchrun, every rank's result in rank order (a list; with
    ``local`` this rank's alone, after every rank finished), or the first failing rank's error
    raised on all of them (a usage error as one, any other as an internal error). In one process,
    ``work()``'s result alone."""
    if world_size() == 1:
        return work()
    try:
        result, outcome = work(), ("ok", None)
    except UsageError as exc:
        result, outcome = None, ("usage", str(exc))
    except Exception as exc:  # ours: the other ranks must not wait for this one's results
        result, outcome = None, ("internal", describe(exc))
    outcomes = gather(outcome if local else (outcome[0], result if outcome[0] == "ok" else outcome[1]))
    for number, (kind, value) in enumerate(outcomes):
        if kind == "usage":
            raise UsageError(f"rank {number}: {value}")
        if kind == "internal":
            raise InternalError(f"rank {number}: {value}")
    return result if local else [value for _, value in outcomes]


def _key(finding: Finding) -> tuple:
    return (finding.code, astuple(replace(finding.where, rank=None)))


RATE_CODES = ("lr_too_high", "lr_too_low")


def _for_the_effective_batch(finding: Finding, ranks: int, per_step: int = 1) -> Finding:
    """A rate judged under torchrun, said beside the batch DDP trains on (``ranks`` ranks' batches):
    the sweep's own when each of its steps accumulated that many of a rank's batches (``per_step``)."""
    if per_step > 1:
        note = (
            f" These rates were judged with {per_step} of a rank's batches accumulated per step: the gradient "
            f"DDP averages over {ranks} ranks (the effective batch)."
        )
    else:
        note = (
            f" These rates were judged on one rank's batch; DDP averages the gradients of {ranks} such batches "
            f"(an effective batch {ranks}x larger, with less gradient noise), so the rate that trains there can be "
            f"somewhat higher (up to {ranks}x by the linear scaling rule, with a warm-up): confirm with "
            f"`nandoctor lr-sweep` on a batch {ranks}x the per-rank one."
        )
    evidence = {**finding.evidence, "effective_batch_ranks": ranks, "sweep_batches_per_step": per_step}
    return replace(finding, evidence=evidence, fix=replace(finding.fix, advice=finding.fix.advice + note))


def merge_findings(per_rank: list[list[Finding]], per_step: int = 1) -> list[Finding]:
    """Every rank's findings once: a finding of every rank as it is, one of some ranks with its rank;
    ``per_step``: how many of a rank's batches each sweep step accumulated."""
    seen: dict[tuple, list[tuple[int, Finding]]] = {}
    for number, findings in enumerate(per_rank):
        for finding in findings:
            seen.setdefault(_key(finding), []).append((number, finding))
    merged = []
    for found in seen.values():
        ranks = sorted({number for number, _ in found})
        number, finding = found[0]
        if len(ranks) < len(per_rank):
            where = replace(finding.where, rank=finding.where.rank if finding.where.rank is not None else number)
            finding = replace(finding, where=where, evidence={**finding.evidence, "ranks": ranks})
        if finding.code in RATE_CODES and len(per_rank) > 1:
            finding = _for_the_effective_batch(finding, len(per_rank), per_step)
        merged.append(finding)
    return rank(merged)


def merge_parts(per_rank: list[dict[str, Any]], wrappers: tuple[str, ...] = ()) -> dict[str, Any]:
    """The report parts of a run under torchrun from each rank's parts (``runner.run_probes``)."""
    coverages = [parts["coverage"] for parts in per_rank]
    totals = [c["batches_total"] for c in coverages]
    not_run: dict[str, str] = {}
    for number, coverage in enumerate(coverages):
        for probe, why in coverage["probes_not_run"].items():
            not_run.setdefault(probe, why if number == 0 else f"rank {number}: {why}")
    coverage = {
        "batches_checked": sum(c["batches_checked"] or 0 for c in coverages),
        "batches_total": None if any(t is None for t in totals) else sum(totals),
        "probes_run": [p for p in coverages[0]["probes_run"] if all(p in c["probes_run"] for c in coverages)],
        "probes_not_run": not_run,
        "ranks": len(per_rank),
    }
    probes = dict(per_rank[0]["probes"])
    sweep_batches = (probes.get("dynamics") or {}).get("batches") or {}
    per_step = sweep_batches.get("per_step", 1)
    probes["distributed"] = {
        "ranks": len(per_rank),
        "wrappers": list(wrappers),
        "per_rank": [
            {"rank": number, "findings": [f.code for f in parts["findings"]], "batches_checked": c["batches_checked"]}
            for number, (parts, c) in enumerate(zip(per_rank, coverages))
        ],
        "batch": (
            "each rank was diagnosed on its own batches; the sweep's rates were judged on "
            + (
                f"{per_step} of a rank's batches accumulated per step, the effective batch of DDP over "
                f"{len(per_rank)} ranks"
                if per_step > 1
                else f"one rank's batch ({sweep_batches.get('ranks_note') or 'no sweep ran'}), while training under "
                f"DDP averages the gradients of {len(per_rank)} of them"
            )
        ),
    }
    if FSDP2 in wrappers:
        probes["distributed"]["fsdp2"] = (
            "the FSDP2 (fully_shard) model was diagnosed as its unsharded replica, built from full_tensor() of "
            "every parameter: one full copy of the weights on every rank; the sharded model was not touched"
        )
    return {
        "findings": merge_findings([parts["findings"] for parts in per_rank], per_step),
        "probes": probes,
        "coverage": coverage,
    }
