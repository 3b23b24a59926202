"""Run one zoo case through nandoctor in-process. ``diagnose`` is the one line to adapt if the
runner's internals move: it only has to turn a build-spec dict into the JSON report (a dict)."""

from __future__ import annotations

import time
from typing import Any


def diagnose(spec: dict, settings: dict | None = None) -> dict:
    from nandoctor.probes import PROBES
    from nandoctor.runner import build_report, run_probes
    from nandoctor.settings import Settings
    from nandoctor.spec import validate
    from tests.conftest import on_test_device

    parts = run_probes(
        validate(on_test_device(spec), "zoo:build"),
        Settings(**(settings or {})),
        sorted(PROBES, key=lambda p: p.order),
        progress=lambda message: None,
        debug=False,
    )
    return build_report("zoo:build", parts).to_dict()


def where_matches(found: dict, expected: dict | None) -> bool:
    """Each expected key equal; a feature may also name one column of it (``pixel_values[3]``)."""
    for key, value in (expected or {}).items():
        got = found.get(key)
        if got == value:
            continue
        if key == "feature" and isinstance(got, str) and got.startswith(f"{value}["):
            continue
        return False
    return True


def judge(case: Any, report: dict) -> tuple[bool, str]:
    """(passed, why): faulty -> its code with its where among the first two findings;
    healthy -> no critical or warning finding."""
    findings = report["findings"]
    if case.code is None:
        bad = [f for f in findings if f["severity"] in ("critical", "warning")]
        return not bad, ", ".join(f"{f['code']}({f['severity']})" for f in bad) or "healthy"
    top = findings[:2]
    hit = any(f["code"] == case.code and where_matches(f["where"], case.where) for f in top)
    return hit, ", ".join(f"{f['code']}" for f in top) or "no findings"


def run_case(case: Any, settings: dict | None = None) -> tuple[dict, float]:
    """Seed as the CLI does, build, diagnose; the report and the seconds taken."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is as fast, and steady on a busy machine
    try:
        torch.manual_seed(0)
        start = time.monotonic()
        spec = case.build()
        report = diagnose(spec, settings)
        return report, time.monotonic() - start
    finally:
        torch.set_num_threads(threads)
