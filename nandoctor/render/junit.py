"""JUnit XML for CI: one testcase per probe, one failing testcase per finding at or above --fail-on."""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import escape, quoteattr

from nandoctor.findings import at_or_above
from nandoctor.render.common import not_run, where_text


def render_junit(report: dict[str, Any], fail_on: str, seconds: float = 0.0) -> str:
    """One testcase per probe that ran, plus one failing testcase per finding at or above ``fail_on``."""
    cases = []
    missed = not_run(report)
    for name, raw in report["probes"].items():
        if isinstance(raw, dict) and "error" in raw:  # failed inside nandoctor: the run is incomplete
            cases.append(
                f'    <testcase classname="nandoctor.probes" name={quoteattr(name)}>'
                f"<error message={quoteattr(str(raw['error']))}/></testcase>"
            )
        elif name in missed or (isinstance(raw, dict) and "skipped" in raw):
            why = missed.get(name) or raw["skipped"]
            cases.append(
                f'    <testcase classname="nandoctor.probes" name={quoteattr(name)}>'
                f"<skipped message={quoteattr(str(why))}/></testcase>"
            )
        else:
            cases.append(f'    <testcase classname="nandoctor.probes" name={quoteattr(name)}/>')
    failures = 0
    for finding in report["findings"]:
        if not at_or_above(finding["severity"], fail_on):
            continue
        failures += 1
        body = escape(f"{finding['title']}\nwhere: {where_text(finding['where'])}\nfix: {finding['fix']['advice']}")
        cases.append(
            f'    <testcase classname="nandoctor.findings" name={quoteattr(finding["code"])}>'
            f"<failure type={quoteattr(finding['severity'])} message={quoteattr(finding['title'])}>"
            f"{body}</failure></testcase>"
        )
    skipped = sum("<skipped" in c for c in cases)
    errors = sum("<error" in c for c in cases)
    return "\n".join(
        [
            '<?xml version="1.0" encoding="utf-8"?>',
            f'<testsuite name={quoteattr("nandoctor " + report["spec"])} tests="{len(cases)}" '
            f'failures="{failures}" errors="{errors}" skipped="{skipped}" time="{seconds:.2f}">',
            *cases,
            "</testsuite>",
        ]
    )


def render_junit_error(spec: str | None, kind: str, message: str) -> str:
    """The JUnit XML of a run that ended without a report (bad input, our failure, Ctrl-C): one
    ``<error>``, so a CI step that uploads the file on every outcome finds one."""
    return "\n".join(
        [
            '<?xml version="1.0" encoding="utf-8"?>',
            f'<testsuite name={quoteattr("nandoctor " + (spec or ""))} tests="1" failures="0" '
            'errors="1" skipped="0" time="0.00">',
            f'    <testcase classname="nandoctor" name={quoteattr(kind)}>'
            f"<error type={quoteattr(kind)} message={quoteattr(message)}/></testcase>",
            "</testsuite>",
        ]
    )
