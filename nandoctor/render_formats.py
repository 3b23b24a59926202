"""More renderers: Markdown (pull-request comments, issue reports), JUnit XML (CI), one summary line."""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import escape, quoteattr

from nandoctor.render import _number, _tables, _where

LEVELS = {"info": 0, "warning": 1, "critical": 2, "never": 99}


def summary_line(report: dict[str, Any], seconds: float | None = None) -> str:
    findings = report["findings"]
    counts = ", ".join(f"{sum(f['severity'] == s for f in findings)} {s}" for s in ("critical", "warning", "info"))
    top = f"; top: {findings[0]['code']} ({_where(findings[0]['where'])})" if findings else ""
    took = f" in {seconds:.1f}s" if seconds is not None else ""
    return f"nandoctor: {report['verdict']}: {counts}{top}{took}"


def render_markdown(report: dict[str, Any]) -> str:
    findings = report["findings"]
    icon = {"critical": "🔴", "warning": "🟠", "info": "🔵"}
    lines = [f"## nandoctor: {report['verdict']}", "", f"`{report['spec']}` · nandoctor {report['nandoctor_version']}", ""]
    if not findings:
        lines.append("No findings: every probe passed.")
    else:
        lines += ["| # | severity | code | where | finding |", "|---|---|---|---|---|"]
        for n, f in enumerate(findings, 1):
            title = f["title"].replace("|", "\\|")
            lines.append(f"| {n} | {icon[f['severity']]} {f['severity']} | `{f['code']}` | {_where(f['where'])} | {title} |")
        for n, f in enumerate(findings, 1):
            lines += ["", f"### {n}. `{f['code']}`", "", f["title"], ""]
            evidence = [(k, v) for k, v in f["evidence"].items() if not isinstance(v, (dict, list))]
            if evidence:
                lines.append("Evidence: " + ", ".join(f"{k} = `{_number(v)}`" for k, v in evidence))
            for explained in f["evidence"].get("explains", []):
                lines.append(f"- explains `{explained['code']}`: {explained['title']}")
            if f["fix"]["config"]:
                lines += ["", "```yaml"] + [f"{k}: {v}" for k, v in f["fix"]["config"].items()] + ["```"]
            if f["fix"]["advice"]:
                lines += ["", f"**Fix:** {f['fix']['advice']}"]
    tables = _tables(report)
    if tables:
        lines += ["", "<details><summary>tables</summary>", "", "```text", *[t for t in tables if t], "```", "</details>"]
    return "\n".join(lines)


def render_junit(report: dict[str, Any], fail_on: str, seconds: float = 0.0) -> str:
    """One testcase per probe that ran, plus one failing testcase per finding at or above ``fail_on``."""
    threshold = LEVELS[fail_on]
    cases = []
    for name, raw in report["probes"].items():
        if isinstance(raw, dict) and "skipped" in raw:
            cases.append(f'    <testcase classname="nandoctor.probes" name={quoteattr(name)}>'
                         f'<skipped message={quoteattr(str(raw["skipped"]))}/></testcase>')
        else:
            cases.append(f'    <testcase classname="nandoctor.probes" name={quoteattr(name)}/>')
    failures = 0
    for finding in report["findings"]:
        if LEVELS[finding["severity"]] < threshold:
            continue
        failures += 1
        body = escape(f"{finding['title']}\nwhere: {_where(finding['where'])}\nfix: {finding['fix']['advice']}")
        cases.append(f'    <testcase classname="nandoctor.findings" name={quoteattr(finding["code"])}>'
                     f'<failure type={quoteattr(finding["severity"])} message={quoteattr(finding["title"])}>'
                     f"{body}</failure></testcase>")
    skipped = sum("<skipped" in c for c in cases)
    return "\n".join(['<?xml version="1.0" encoding="utf-8"?>',
                      f'<testsuite name={quoteattr("nandoctor " + report["spec"])} tests="{len(cases)}" '
                      f'failures="{failures}" errors="0" skipped="{skipped}" time="{seconds:.2f}">',
                      *cases, "</testsuite>"])
