"""What the API returns: a diagnosis :class:`Report`, a :class:`SweepReport`, :class:`FeatureStats`.

Each wraps the JSON-shaped dict the CLI prints (docs/reference.md §2) and adds typed access:
frozen :class:`~nandoctor.findings.Finding` objects, ``to_dict``/``to_json``, a terminal
``__str__`` and a notebook ``_repr_markdown_``. Renderers are imported on use.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nandoctor import __version__
from nandoctor.errors import UsageError
from nandoctor.findings import FAIL_LEVELS, Finding, Fix, Severity, Where, at_or_above


def finding_from_dict(data: Mapping[str, Any]) -> Finding:
    """The frozen :class:`Finding` of one report entry (unknown ``where`` keys are dropped)."""
    where_fields = {f.name for f in dataclasses.fields(Where)}
    where = {k: v for k, v in (data.get("where") or {}).items() if k in where_fields}
    fix = data.get("fix") or {}
    return Finding(
        code=data["code"],
        severity=Severity(data["severity"]),
        title=data["title"],
        where=Where(**where),
        evidence=dict(data.get("evidence") or {}),
        fix=Fix(
            config=dict(fix.get("config") or {}),
            advice=fix.get("advice", ""),
            verified=dict(fix["verified"]) if fix.get("verified") else None,
        ),
    )


def exit_code(severities: Iterable[str], incomplete: bool, fail_on: str = "critical") -> int:
    """The contract's exit code: 1 for a finding at or above ``fail_on``, 3 incomplete, else 0."""
    if fail_on not in FAIL_LEVELS:
        raise UsageError(f"fail_on must be one of {', '.join(FAIL_LEVELS)}, got {fail_on!r}")
    if any(at_or_above(severity, fail_on) for severity in severities):
        return 1
    return 3 if incomplete else 0


@dataclass(frozen=True)
class Report:
    """A diagnosis: the verdict, the ranked findings (most likely root cause first), coverage.

    The runner builds it from its findings; the CLI, the API and every renderer take this one
    object. ``str(report)`` is the terminal report, ``report._repr_markdown_()`` what a notebook
    shows, ``report.to_dict()`` / ``to_json()`` the JSON report of docs/reference.md §2.
    ``sections`` holds what a command adds to the report (``replay``).
    """

    spec: str
    verdict: str
    findings: tuple[Finding, ...]
    coverage: dict[str, Any]
    probes: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)  # raw numbers, NaN among them
    sections: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    version: str = field(default=__version__, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Report":
        """A report from its JSON form (``json.load`` of ``--out``)."""
        data = copy.deepcopy(dict(data))
        known = {"nandoctor_version", "spec", "verdict", "findings", "coverage", "probes"}
        return cls(
            spec=data.get("spec", ""),
            verdict=data["verdict"],
            findings=tuple(finding_from_dict(f) for f in data["findings"]),
            coverage=data.get("coverage") or {},
            probes=data.get("probes") or {},
            sections={k: v for k, v in data.items() if k not in known},
            version=data.get("nandoctor_version", __version__),
        )

    def __eq__(self, other: object) -> bool:
        """Equal when their JSON reports agree on spec, verdict, findings and coverage: a report read
        back from its JSON (where a NaN in the evidence is the string "nan") equals the report."""
        if not isinstance(other, Report):
            return NotImplemented
        return self._compared() == other._compared()

    def _compared(self) -> Any:
        from nandoctor.render.common import json_safe

        return json_safe(
            {
                "spec": self.spec,
                "verdict": self.verdict,
                "coverage": self.coverage,
                "findings": [f.to_dict() for f in self.findings],
            }
        )

    @property
    def healthy(self) -> bool:
        return self.verdict == "healthy"

    def exit_code(self, fail_on: str = "critical") -> int:
        """The CLI's exit code: 1 for a finding at or above ``fail_on``, 3 incomplete, else 0; a replay
        whose failure did not happen again is 3 whatever it found (it is not the recorded failure)."""
        code = exit_code((f.severity.value for f in self.findings), self.verdict == "incomplete", fail_on)
        return 3 if self.sections.get("replay", {}).get("reproduced") is False else code

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(
            {
                "nandoctor_version": self.version,
                "spec": self.spec,
                "verdict": self.verdict,
                "findings": [f.to_dict() for f in self.findings],
                "coverage": self.coverage,
                "probes": self.probes,
                **self.sections,
            }
        )

    def to_json(self) -> str:
        from nandoctor.render.common import render_json

        return render_json(self.to_dict())

    def render(self, fmt: str = "text") -> str:
        """``text``, ``json`` or ``markdown`` (a replay's report renders with its replay section)."""
        from nandoctor.render import render

        return render(self.to_dict(), fmt)

    def __str__(self) -> str:
        return self.render("text")

    def _repr_markdown_(self) -> str:
        return self.render("markdown")


@dataclass(frozen=True)
class SweepReport:
    """An LR sweep: one run per rate from the same start, and the recommended rate."""

    spec: str
    user_lr: float
    recommended_lr: float | None
    why: str
    runs: tuple[dict[str, Any], ...] = field(repr=False)
    _data: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SweepReport":
        data = copy.deepcopy(dict(data))
        return cls(
            spec=data["spec"],
            user_lr=data["user_lr"],
            recommended_lr=data["recommended_lr"],
            why=data["why"],
            runs=tuple(data["runs"]),
            _data=data,
        )

    @property
    def user_diverges(self) -> bool:
        """The run at (nearest to) the user's rate diverged."""
        if "user_diverged" in self._data:
            return bool(self._data["user_diverged"])
        user = next((r for r in self.runs if r["lr"] == self._data.get("user_run_lr")), None)
        return user is not None and user["verdict"] == "diverged"

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self._data)

    def to_json(self) -> str:
        from nandoctor.render.common import render_json

        return render_json(self._data)

    @staticmethod
    def check_plot_path(path: str | Path | None) -> None:
        """Refuse a plot file matplotlib cannot write (its extension), before a sweep runs for it.

        matplotlib is imported here, on use, never when the CLI only shows its help.
        """
        if path is None:
            return
        try:
            from matplotlib.backend_bases import FigureCanvasBase
        except ImportError as exc:
            raise UsageError("--plot needs matplotlib: pip install 'nandoctor[plot]'") from exc
        suffix = Path(path).suffix.lower().lstrip(".")
        formats = FigureCanvasBase.get_supported_filetypes()
        if suffix and suffix not in formats:
            raise UsageError(
                f"--plot cannot write a .{suffix} file: give one of {', '.join('.' + f for f in sorted(formats))}"
            )

    def plot(self, path: str | Path) -> None:
        """Loss and gradient-norm curves per rate to a PNG (needs matplotlib)."""
        from nandoctor.render.sweep import plot_sweep

        plot_sweep(self._data, str(path))

    def __str__(self) -> str:
        from nandoctor.render.sweep import render_sweep

        return render_sweep(self._data)

    def _repr_markdown_(self) -> str:
        return f"```\n{self}\n```"


@dataclass(frozen=True)
class FeatureStats:
    """Per-column statistics and flags of tabular training data."""

    rows: int
    columns: dict[str, dict[str, Any]] = field(repr=False)
    _data: dict[str, Any] = field(repr=False, compare=False)

    @property
    def flagged(self) -> dict[str, list[str]]:
        """Column -> its flags (``not_normalized``, ``nonfinite``, ...), for flagged columns only."""
        return {name: [f["flag"] for f in c["flags"]] for name, c in self.columns.items() if c["flags"]}

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self._data)

    def to_json(self) -> str:
        from nandoctor.render.common import render_json

        return render_json(self._data)

    def render(self, fmt: str = "text", emit_norm: str | None = None) -> str:
        from nandoctor.render.features import render_features

        return render_features(self._data, fmt, emit_norm)

    def __str__(self) -> str:
        return self.render("text")

    def _repr_markdown_(self) -> str:
        return f"```\n{self}\n```"
