"""Probe settings: thresholds and budgets. ``configs/probes.yaml`` mirrors these defaults."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from nandoctor.errors import UsageError


@dataclass(frozen=True)
class Settings:
    seed: int = 0
    batches: int = 4
    # activation_explosion: output RMS grows this many times over the first layer's
    activation_growth: float = 1e3
    activation_min_rms: float = 1e2
    # exploding_gradients: global gradient norm (warning, critical)
    grad_norm_warning: float = 1e3
    grad_norm_critical: float = 1e5
    # vanishing_gradients: a parameter whose gradient RMS is below this counts as "no gradient"
    grad_rms_vanishing: float = 1e-10
    vanishing_share: float = 0.9
    top_gradients: int = 10
    # training dynamics in diagnose: a short sweep of user_lr * 10**k for k in [-down, up]
    sweep_steps: int = 20
    sweep_decades_down: int = 2
    sweep_decades_up: int = 3
    sweep_budget_s: float = 120.0  # rates nearest the user's run first; the rest are dropped past this
    # grad_clip_too_aggressive: share of steps clipped and median clip factor
    clip_share: float = 0.9
    clip_factor: float = 10.0
    # amp_overflow for a float32 spec: "fp16" or "bf16" checks that precision as a what-if
    amp_what_if: str = ""


def load_settings(path: str | None, overrides: dict[str, Any] | None = None) -> Settings:
    """Defaults, then a YAML file's values, then explicit overrides (``--batches``)."""
    values: dict[str, Any] = {}
    if path:
        import yaml

        file = Path(path)
        if not file.is_file():
            raise UsageError(f"no such settings file: {path}")
        try:
            loaded = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UsageError(f"settings file {path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise UsageError(f"settings file {path} must hold a mapping")
        values.update(loaded)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    known = {f.name: f.type for f in fields(Settings)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UsageError(f"unknown settings: {', '.join(unknown)} (known: {', '.join(known)})")
    defaults = Settings()
    for key, value in values.items():
        expected = type(getattr(defaults, key))
        if expected is str:
            if value not in ("", "fp16", "bf16", None):
                raise UsageError(f"setting {key!r} must be fp16 or bf16, got {value!r}")
            values[key] = value or ""
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"setting {key!r} must be a number, got {value!r}")
        values[key] = expected(value)
    if values.get("batches", 1) < 1:
        raise UsageError("setting 'batches' must be at least 1")
    return Settings(**values)
