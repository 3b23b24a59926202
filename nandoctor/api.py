"""The Python API: ``diagnose``, ``lr_sweep`` and ``feature_stats`` for notebooks and scripts.

The CLI is a thin layer over these functions (their results: nandoctor.results). A call leaves
the caller's process as it found it: the torch, Python and NumPy random streams, torch's global
flags, the model's weights, modes and hooks, and ``sys.modules`` (a build file and its sibling
modules are imported for the call only, so two specs with a sibling ``model.py`` each never see each other's).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Union

from nandoctor.distributed import label as rank_label
from nandoctor.errors import UsageError
from nandoctor.results import FeatureStats, Report, SweepReport, finding_from_dict
from nandoctor.spec import Overrides, SpecLike, load, spec_label, stderr_progress

__all__ = [
    "diagnose",
    "lr_sweep",
    "feature_stats",
    "load",
    "Report",
    "SweepReport",
    "FeatureStats",
    "finding_from_dict",
    "caller_state_kept",
]

#: ``True`` prints progress on stderr, ``False`` is silent, a callable receives each line.
Progress = Union[bool, Callable[[str], None]]


def progress_printer(progress: Progress) -> Callable[[str], None]:
    if callable(progress):
        return progress
    return labelled_progress if progress else (lambda message: None)


def labelled_progress(message: str) -> None:
    """Progress on stderr; under torchrun each line says its rank."""
    stderr_progress(rank_label(message))


class _Lines:
    """A stderr stand-in that hands each finished line to ``progress`` (lines printed below the API)."""

    def __init__(self, say: Callable[[str], None]):
        self.say, self.partial = say, ""

    def write(self, text: str) -> int:
        lines = (self.partial + text).split("\n")
        self.partial = lines.pop()
        for line in lines:
            self.say(line)
        return len(text)

    def flush(self) -> None:
        pass


def _count(name: str, value: Any, least: int) -> None:
    """A count given to the API is a whole number of at least ``least`` (``steps="3"`` is a mistake)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{name} takes a whole number, got {value!r}")
    if value < least:
        raise UsageError(f"{name} must be at least {least}, got {value}")


def _names(name: str, value: Any) -> list[str]:
    """Probe names: a list of strings (a bare string would be read letter by letter)."""
    if (
        isinstance(value, str)
        or not isinstance(value, (list, tuple, set, frozenset))
        or not all(isinstance(v, str) for v in value)
    ):
        raise UsageError(f'{name} takes a list of probe names, e.g. ["forward"], got {value!r}')
    return list(value)


# ----------------------------------------------------------------- leaving the caller as found


def _user_folders(spec: SpecLike) -> list[Path]:
    """Folders whose modules a call may import for the user (and must forget afterwards)."""
    if isinstance(spec, str):
        from nandoctor.spec import _is_file_target, split_spec

        target, _ = split_spec(spec)
        return [Path(target).resolve().parent] if _is_file_target(target) else [Path.cwd()]
    return [Path.cwd()] if callable(spec) and not isinstance(spec, Mapping) else []


def _is_users_module(name: str, module: Any, folders: list[Path]) -> bool:
    if name.startswith("nandoctor_user_"):
        return True
    file = getattr(module, "__file__", None)
    # torch.ops and friends carry a bare "_ops.py": only a real file's place counts
    if not isinstance(file, str) or not folders or not os.path.isabs(file) or not os.path.isfile(file):
        return False
    path = Path(file).resolve()
    ours = Path(__file__).resolve().parent
    if ours in path.parents or any(p in ("site-packages", "dist-packages") for p in path.parts):
        return False
    return any(folder in path.parents for folder in folders)


@contextmanager
def imported_for_the_call(folders: list[Path]) -> Iterator[None]:
    """Forget the user's modules imported during the call (libraries they pulled in stay)."""
    before = set(sys.modules)
    try:
        yield
    finally:
        for name in sorted(set(sys.modules) - before, reverse=True):
            if _is_users_module(name, sys.modules.get(name), folders):
                module = sys.modules.pop(name)
                parent_name, _, child = name.rpartition(".")
                parent = sys.modules.get(parent_name) if parent_name else None
                if parent is not None and getattr(parent, child, None) is module:
                    delattr(parent, child)


@contextmanager
def caller_state_kept(spec: SpecLike) -> Iterator[None]:
    """RNG streams, torch's global flags and ``sys.modules`` as the caller had them.

    Inside, gradients are on whatever the caller had (``no_grad``, ``inference_mode``): the probes
    and the build need them, and a caller's evaluation block must not read as vanishing gradients.
    """
    import torch

    from nandoctor.state import preserved_rng, preserved_torch_globals

    with (
        imported_for_the_call(_user_folders(spec)),
        preserved_torch_globals(),
        preserved_rng(),
        torch.inference_mode(False),
        torch.enable_grad(),
    ):
        yield


# ------------------------------------------------------------------------------- the setup


def _settings(settings: str | Path | Mapping[str, Any] | None, explicit: dict[str, Any]) -> Any:
    from nandoctor.settings import Settings, load_settings

    if isinstance(settings, Settings):  # built already: the explicit keywords still win
        settings = settings.as_dict()
    if isinstance(settings, Mapping):
        return load_settings(None, {**dict(settings), **{k: v for k, v in explicit.items() if v is not None}})
    return load_settings(None if settings is None else str(settings), explicit)


def _config(config: str | Path | Mapping[str, Any] | None) -> dict[str, Any] | None:
    if config is None or isinstance(config, Mapping):
        return None if config is None else dict(config)
    from nandoctor.config import load_config, plain

    document, _ = load_config(str(config))
    return plain(document)


# ----------------------------------------------------------------------------- the calls


def diagnose(
    spec: SpecLike,
    *,
    overrides: Overrides = None,
    probes: Sequence[str] = (),
    skip: Sequence[str] = (),
    quick: bool = False,
    batches: int | None = None,
    seed: int | None = None,
    amp_what_if: str | None = None,
    steps: int | None = None,
    settings: str | Path | Mapping[str, Any] | None = None,
    config: str | Path | Mapping[str, Any] | None = None,
    budget_s: float | None = None,
    progress: Progress = True,
    debug: bool = False,
    name: str | None = None,
) -> Report:
    """Run the probes on a training setup and return the ranked root-cause report.

    ``spec`` is a SPEC string (``"model.py:build"``), the mapping a build function returns
    (``{"model": ..., "data": ...}``, see docs/reference.md §1) or the build function; ``overrides``
    are its keyword arguments (a dict, or ``["lr=1e-3"]`` as ``--set`` takes them). ``probes`` /
    ``skip`` choose probes, ``quick`` skips the training-dynamics sweep and the training steps,
    ``steps`` is how many steps of the user's own configuration to train (default 40), ``settings`` is a YAML
    file or a mapping of probe settings, ``config`` the training config (a YAML file or a
    mapping) whose keys the fixes name, ``budget_s`` a time budget. Raises
    :class:`nandoctor.UsageError` for bad input.
    """
    import time

    from nandoctor.distributed import process_group
    from nandoctor.probes import training_probes
    from nandoctor.ranks import merge_parts, on_every_rank
    from nandoctor.runner import build_report, run_probes, select_probes

    for label, count, least in (("steps", steps, 1), ("batches", batches, 1), ("seed", seed, 0)):
        _count(label, count, least)
    say = progress_printer(progress)
    start = time.monotonic()
    # under torchrun: every rank diagnoses its own batches; the ranks' results merge into one report
    with process_group(), caller_state_kept(spec):
        chosen_settings = _settings(
            settings, {"batches": batches, "seed": seed, "amp_what_if": amp_what_if, "guard_steps": steps}
        )
        chosen = select_probes(
            _names("probes", probes), _names("skip", skip) + (training_probes() if quick else []), progress=say
        )
        config_values = _config(config)

        def load_this_rank() -> Any:
            nonlocal budget_s
            setup = load(spec, overrides, chosen_settings.seed, say, name)
            if config_values is not None:
                setup.config = config_values
            if budget_s is not None:  # the build function's time is part of the budget
                took = time.monotonic() - start
                if took > budget_s:
                    say(f"nandoctor: loading the spec took {took:.1f}s of the {budget_s:g}s budget")
                budget_s = max(budget_s - took, 0.0)
            return setup

        # every rank builds before any probes: a rank whose build raised stops all of them here
        setup = on_every_rank(load_this_rank, local=True)
        outcome = on_every_rank(
            lambda: run_probes(setup, chosen_settings, chosen, progress=say, debug=debug, budget_s=budget_s)
        )
        parts = merge_parts(outcome, setup.wrappers) if isinstance(outcome, list) else outcome
        return build_report(name or spec_label(spec), parts)


def _rates(lrs: Sequence[float] | str | None) -> list[float] | None:
    from nandoctor.sweep_report import parse_rates

    if lrs is None or isinstance(lrs, str):
        return parse_rates(lrs)
    if not isinstance(lrs, (list, tuple)) or any(isinstance(r, bool) or not isinstance(r, (int, float)) for r in lrs):
        raise UsageError(f"lrs takes a list of numbers (or a comma-separated string), got {lrs!r}")
    return parse_rates(",".join(repr(float(r)) for r in lrs)) if len(lrs) else None


def lr_sweep(
    spec: SpecLike,
    *,
    overrides: Overrides = None,
    lrs: Sequence[float] | str | None = None,
    steps: int | None = None,
    batches: int | None = None,
    seed: int | None = None,
    settings: str | Path | Mapping[str, Any] | None = None,
    progress: Progress = True,
    name: str | None = None,
) -> SweepReport:
    """Train ``steps`` steps (default: planned from the model's size, as ``diagnose`` plans them) at
    each rate (default: two decades each way of the spec's ``lr``, extended where the loss says)
    from the same start, as the user trains (optimizer, clipping, precision). ``settings``: a YAML
    file or a mapping of probe settings, as ``diagnose`` takes them."""
    from contextlib import nullcontext, redirect_stderr

    from nandoctor.sweep_report import sweep_report

    for label, count, least in (("steps", steps, 2), ("batches", batches, 1), ("seed", seed, 0)):
        _count(label, count, least)
    from nandoctor.distributed import process_group
    from nandoctor.ranks import on_every_rank

    say = progress_printer(progress)
    # under torchrun: each rank sweeps its own batches (accumulated to the effective batch); rank 0 prints
    with process_group(), caller_state_kept(spec):
        rates = _rates(lrs)
        chosen = _settings(settings, {"batches": batches, "seed": seed})
        setup = on_every_rank(lambda: load(spec, overrides, chosen.seed, say, name), local=True)
        # the sweep prints its progress on stderr: it goes where ``progress`` says
        with nullcontext() if progress and not callable(progress) else redirect_stderr(_Lines(say)):  # type: ignore[arg-type]
            per_rank = on_every_rank(lambda: sweep_report(name or spec_label(spec), setup, chosen, rates, steps))
        return SweepReport.from_dict(_rank_sweeps(per_rank) if isinstance(per_rank, list) else per_rank)


def _rank_sweeps(per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    """Under torchrun: rank 0's sweep, each rank's pick beside it, and the user's rate diverging when it
    does on any rank (every rank then exits with the same code)."""
    merged = dict(per_rank[0])
    merged["ranks"] = [
        {"rank": number, "recommended_lr": sweep.get("recommended_lr"), "user_diverged": sweep.get("user_diverged")}
        for number, sweep in enumerate(per_rank)
    ]
    merged["user_diverged"] = any(bool(sweep.get("user_diverged")) for sweep in per_rank)
    return merged


def feature_stats(
    paths: str | Path | Sequence[str | Path],
    *,
    columns: Sequence[str] | str | None = None,
    limit_rows: int | None = None,
    progress: Progress = True,
) -> FeatureStats:
    """Statistics and flags of every numeric column of parquet/CSV/TSV files (files, folders, globs)."""
    from nandoctor.featurestats.files import analyse, unusable

    if limit_rows is not None and limit_rows < 1:
        raise UsageError("--limit-rows must be at least 1")
    files = [str(paths)] if isinstance(paths, (str, Path)) else [str(p) for p in paths]
    if isinstance(columns, str):
        columns = [c.strip() for c in columns.split(",") if c.strip()] or None
    result = analyse(files, list(columns) if columns else None, limit_rows, progress=progress_printer(progress))
    problem = unusable(result)
    if problem:
        raise UsageError(problem)
    return FeatureStats(rows=result["rows"], columns=result["columns"], _data=result)
