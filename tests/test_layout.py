"""The layout holds: no import cycle, small documented modules, a probe is one file + one line."""

import ast
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nandoctor.cli import app
from nandoctor.findings import CodeDoc, Finding, Severity, Where
from nandoctor.probes import PROBES
from nandoctor.probes.base import Fact, Probe, ProbeResult, Setting

PACKAGE = Path(__file__).parents[1] / "nandoctor"
ROOT = Path(__file__).parents[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports, at any depth (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nandoctor"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("nandoctor"))
    return found


def test_no_import_cycle_inside_the_package():
    graph = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}
    graph = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                cycle = trail[trail.index(dep):] + [dep] if dep in trail else [module, dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, trail + [dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_is_small_and_says_its_job(path):
    text = path.read_text()
    assert len(text.splitlines()) <= 420, f"{path.name} has {len(text.splitlines())} lines"
    docstring = ast.get_docstring(ast.parse(text))
    assert docstring and docstring.strip(), f"{path} has no module docstring"


def test_reference_is_the_contract():
    contract = ROOT.parent / "shared" / "CONTRACT.md"
    if not contract.is_file():
        pytest.skip("no shared/CONTRACT.md beside the repository")
    assert (ROOT / "docs" / "reference.md").read_text() == contract.read_text()


def test_help_texts_send_nobody_outside_the_project():
    runner = CliRunner()
    for command in ([], ["diagnose"], ["smoke"], ["lr-sweep"], ["feature-stats"], ["explain"]):
        text = runner.invoke(app, command + ["--help"]).output
        assert "CONTRACT" not in text and "§" not in text and "shared/" not in text, command
    assert "../shared" not in (ROOT / "README.md").read_text()


class ThrowawayProbe(Probe):
    """A probe that exists only in this test: one class, one registry line."""

    name = "throwaway"
    description = "a test probe"
    order = 99
    requires = (Fact.FORWARD_OK,)
    codes = (CodeDoc("throwaway_code", 99, "a test code", "it is a test", "this test", "nothing"),)
    settings = (Setting("throwaway_limit", 7.0, "a test threshold"),)

    def run(self, ctx):
        limit = ctx.settings.throwaway_limit
        return ProbeResult([Finding("throwaway_code", Severity.WARNING, f"limit {limit}", Where(module=""))],
                           {"limit": limit})


@pytest.fixture
def registered():
    PROBES.append(ThrowawayProbe)
    try:
        yield
    finally:
        PROBES.remove(ThrowawayProbe)


def test_a_new_probe_needs_only_its_class_and_one_registry_entry(registered, tmp_path):
    from nandoctor.settings import Settings, settings_yaml

    runner = CliRunner()
    explained = runner.invoke(app, ["explain", "throwaway_code"])
    assert explained.exit_code == 0 and "a test code" in explained.output
    assert "throwaway_code" in runner.invoke(app, ["explain"]).output
    assert Settings().throwaway_limit == 7.0 and "throwaway_limit" in settings_yaml()
    settings_file = tmp_path / "s.yaml"
    settings_file.write_text("throwaway_limit: 3.5\n")
    result = runner.invoke(app, ["diagnose", "nandoctor.examples.healthy:build", "--probe", "throwaway",
                                 "--settings", str(settings_file), "--format", "json"])
    report = json.loads(result.stdout)
    assert report["findings"][0]["code"] == "throwaway_code"
    assert report["probes"]["throwaway"] == {"limit": 3.5}
    assert "forward" in report["probes"]  # pulled in: it provides forward_ok
    assert "also running forward" in result.stderr


def test_probe_alone_pulls_in_what_it_needs():
    result = CliRunner().invoke(app, ["diagnose", "nandoctor.examples.healthy:build", "--probe", "gradients",
                                      "--format", "json"])
    report = json.loads(result.stdout)
    assert set(report["probes"]) == {"forward", "backward", "gradients"}
    assert "skipped" not in report["probes"]["gradients"]
    assert report["coverage"]["probes_run"] == ["forward", "backward", "gradients"]
