"""Markdown reports: pull-request comments, issue reports."""

from __future__ import annotations

from typing import Any

from nandoctor.render.common import batches_line, not_run, number, skipped_for_facts, tables, verified_text, where_text


def render_markdown(report: dict[str, Any]) -> str:
    findings = report["findings"]
    icon = {"critical": "🔴", "warning": "🟠", "info": "🔵"}
    lines = [
        f"## nandoctor: {report['verdict']}",
        "",
        f"`{report['spec']}` · nandoctor {report['nandoctor_version']}",
        "",
    ]
    missed = not_run(report)
    if not findings:
        lines.append("No findings: every probe that ran passed." if missed else "No findings: every probe passed.")
    else:
        lines += ["| # | severity | code | where | finding |", "|---|---|---|---|---|"]
        for n, f in enumerate(findings, 1):
            title = f["title"].replace("|", "\\|")
            lines.append(
                f"| {n} | {icon[f['severity']]} {f['severity']} | `{f['code']}` | {where_text(f['where'])} | {title} |"
            )
        for n, f in enumerate(findings, 1):
            lines += ["", f"### {n}. `{f['code']}`", "", f["title"], ""]
            evidence = [(k, v) for k, v in f["evidence"].items() if not isinstance(v, (dict, list))]
            if evidence:
                lines.append("Evidence: " + ", ".join(f"{k} = `{number(v)}`" for k, v in evidence))
            for explained in f["evidence"].get("explains", []):
                lines.append(f"- explains `{explained['code']}`: {explained['title']}")
            if f["fix"]["config"]:
                lines += ["", "```yaml"] + [f"{k}: {v}" for k, v in f["fix"]["config"].items()] + ["```"]
            if f["fix"]["advice"]:
                lines += ["", f"**Fix:** {f['fix']['advice']}"]
            verified = verified_text(f["fix"].get("verified"))
            if verified:
                lines += ["", f"**Verified:** {verified}"]
    if missed:
        lines += ["", "**Not run (the report is incomplete):**", ""] + [f"- `{n}`: {why}" for n, why in missed.items()]
    skipped = skipped_for_facts(report)
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"`{n}` ({why})" for n, why in skipped.items())]
    checked = batches_line(report)
    if checked:
        lines += ["", checked[0].upper() + checked[1:] + "."]
    extra = tables(report)
    if extra:
        lines += [
            "",
            "<details><summary>tables</summary>",
            "",
            "```text",
            *[t for t in extra if t],
            "```",
            "</details>",
        ]
    return "\n".join(lines)
