"""nandoctor: finds why a PyTorch training run goes NaN or refuses to learn.

The Python API (``nandoctor.diagnose``, ``lr_sweep``, ``feature_stats``, ``Report``) is loaded
on first use (PEP 562 ``__getattr__``): ``import nandoctor`` and ``nandoctor --help`` import
neither torch nor pandas. Type checkers read ``__init__.pyi`` beside this file.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "diagnose": "nandoctor.api",
    "lr_sweep": "nandoctor.api",
    "feature_stats": "nandoctor.api",
    "Report": "nandoctor.api",
    "SweepReport": "nandoctor.api",
    "FeatureStats": "nandoctor.api",
    "Finding": "nandoctor.findings",
    "Where": "nandoctor.findings",
    "Fix": "nandoctor.findings",
    "Severity": "nandoctor.findings",
    "UsageError": "nandoctor.errors",
    "Guard": "nandoctor.guard",
    "GuardTripped": "nandoctor.guard",
}
__all__ = [
    "__version__",
    "diagnose",
    "lr_sweep",
    "feature_stats",
    "Report",
    "SweepReport",
    "FeatureStats",
    "Finding",
    "Where",
    "Fix",
    "Severity",
    "UsageError",
    "Guard",
    "GuardTripped",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'nandoctor' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
