"""Renderers: report dict -> text, JSON, markdown, JUnit. They format; they never compute findings."""

from __future__ import annotations

from typing import Any


def render(report: dict[str, Any], fmt: str) -> str:
    """The report in ``fmt``: text, json or markdown (a replay's text shows its replay first)."""
    if fmt == "markdown":
        from nandoctor.render.markdown import render_markdown

        return render_markdown(report)
    if fmt == "json":
        from nandoctor.render.common import render_json

        return render_json(report)
    if "replay" in report:
        from nandoctor.render.replay import render_replay

        return render_replay(report)
    from nandoctor.render.text import render_text

    return render_text(report)
