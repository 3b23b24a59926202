"""The layout holds: imports go down the pipeline, no cycle, small documented modules, a setting is
declared where it is read, a probe is one file + one line."""

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


def _import_nodes(path: Path) -> list[tuple[int, str]]:
    """(line, module) for each module of the package that ``path`` imports, at any depth (function-level
    imports too; ``from nandoctor import probes`` names ``nandoctor.probes``). Imports under
    ``if TYPE_CHECKING:`` are type hints, not dependencies: they are left out."""
    tree = ast.parse(path.read_text())
    hints = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    found = []
    for node in ast.walk(tree):
        if id(node) in hints:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nandoctor"):
            found.append((node.lineno, node.module))
            found += [
                (node.lineno, f"{node.module}.{a.name}")
                for a in node.names
                if (PACKAGE.parent / f"{node.module}.{a.name}".replace(".", "/")).with_suffix(".py").is_file()
                or (PACKAGE.parent / f"{node.module}.{a.name}".replace(".", "/") / "__init__.py").is_file()
            ]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("nandoctor")]
    return found


def _imports(path: Path) -> set[str]:
    return {module for _, module in _import_nodes(path)}


# The pipeline, first to last: a module imports only from its own layer or the layers before it.
# Render sits before results: a Report renders itself (``str(report)``), and renderers format the
# report's plain data. The "run" layer drives a whole command over the layers below it.
LAYERS = [
    (
        "foundation",
        [
            "nandoctor",
            "nandoctor.errors",
            "nandoctor.distributed",
            "nandoctor.findings",
            "nandoctor.state",
            "nandoctor.batches",
            "nandoctor.overrides",
            "nandoctor.conventions",
            "nandoctor.config",
            "nandoctor.examples",
            "nandoctor.featurestats.columns",
        ],
    ),
    ("spec", ["nandoctor.spec", "nandoctor.user_code", "nandoctor.loss", "nandoctor.guard", "nandoctor.integrations"]),
    ("context", ["nandoctor.context"]),
    ("measure/sweep", ["nandoctor.measure", "nandoctor.step", "nandoctor.sweep", "nandoctor.featurestats"]),
    ("probes", ["nandoctor.probes", "nandoctor.codes", "nandoctor.settings"]),
    ("ranking", ["nandoctor.ranking"]),
    ("render", ["nandoctor.render"]),
    ("results", ["nandoctor.results"]),
    (
        "run",
        ["nandoctor.runner", "nandoctor.ranks", "nandoctor.sweep_report", "nandoctor.scan", "nandoctor.guard.replay"],
    ),
    (
        "cli/api",
        [
            "nandoctor.api",
            "nandoctor.exits",
            "nandoctor.descriptors",
            "nandoctor.cli_options",
            "nandoctor.cli",
            "nandoctor.__main__",
        ],
    ),
]


def _layer(module: str) -> int:
    """The layer of the longest prefix that names ``module`` (``nandoctor.guard.replay`` before ``nandoctor.guard``)."""
    matches = [
        (len(prefix), rank)
        for rank, (_, prefixes) in enumerate(LAYERS)
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    assert matches, f"{module} is in no layer of LAYERS: add it where it belongs"
    return max(matches)[1]


def test_imports_only_go_down_the_pipeline():
    climbing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        for line, imported in _import_nodes(path):
            if _layer(imported) > _layer(module):
                climbing.append(
                    f"{path.relative_to(PACKAGE.parent)}:{line} {module} ({LAYERS[_layer(module)][0]}) "
                    f"imports {imported} ({LAYERS[_layer(imported)][0]})"
                )
    assert not climbing, "imports that climb back up the pipeline:\n" + "\n".join(climbing)


def _unit(module: str) -> str:
    """Modules of one package share their settings, except probes: each probe can be taken out alone."""
    parent = module.rpartition(".")[0]
    return module if parent in ("nandoctor", "nandoctor.probes") or not parent else parent


def _settings_read(path: Path, names: set[str]) -> set[str]:
    """Setting names the module reads: ``<...>.settings.NAME``, ``settings.NAME``, ``limits.NAME``,
    ``settings.is_default("NAME")``."""
    read = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in names:
            owner = node.value
            owner_name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
            if owner_name in ("settings", "limits"):
                read.add(node.attr)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", None) == "is_default"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and node.args[0].value in names
        ):
            read.add(node.args[0].value)
    return read


def test_a_setting_is_declared_where_it_is_read():
    """Reading a threshold that only another probe declares breaks when that probe is taken out."""
    import importlib

    import nandoctor.context

    run_settings = {s.name for s in nandoctor.context.RUN_SETTINGS}  # they travel with the context every probe gets
    declared_in = {}
    for path in PACKAGE.rglob("*.py"):  # a module's own SETTINGS, then those declared on a probe class
        if "\nSETTINGS = " in path.read_text():
            module = importlib.import_module(_module_name(path))
            declared_in.update({s.name: module.__name__ for s in module.SETTINGS})
    for probe in PROBES:
        declared_in.update({s.name: probe.__module__ for s in probe.settings if s.name not in declared_in})
    graph = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}

    def reachable(module: str) -> set[str]:
        seen, todo = set(), [module]
        while todo:
            current = todo.pop()
            if current not in seen:
                seen.add(current)
                todo += [d for d in graph.get(current, ()) if d in graph]
        return {_unit(m) for m in seen}

    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        for name in sorted(_settings_read(path, set(declared_in)) - run_settings):
            if _unit(declared_in[name]) not in reachable(module):
                wrong.append(f"{module} reads {name}, declared in {declared_in[name]}, which it does not import")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_inside_the_package():
    graph = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}
    graph = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                cycle = trail[trail.index(dep) :] + [dep] if dep in trail else [module, dep]
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
        return ProbeResult(
            [Finding("throwaway_code", Severity.WARNING, f"limit {limit}", Where(module=""))], {"limit": limit}
        )


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
    result = runner.invoke(
        app,
        [
            "diagnose",
            "nandoctor.examples.healthy:build",
            "--probe",
            "throwaway",
            "--settings",
            str(settings_file),
            "--format",
            "json",
        ],
    )
    report = json.loads(result.stdout)
    assert report["findings"][0]["code"] == "throwaway_code"
    assert report["probes"]["throwaway"] == {"limit": 3.5}
    assert "forward" in report["probes"]  # pulled in: it provides forward_ok
    assert "also running forward" in result.stderr


def test_probe_alone_pulls_in_what_it_needs():
    result = CliRunner().invoke(
        app, ["diagnose", "nandoctor.examples.healthy:build", "--probe", "gradients", "--format", "json"]
    )
    report = json.loads(result.stdout)
    assert set(report["probes"]) == {"forward", "backward", "gradients"}
    assert "skipped" not in report["probes"]["gradients"]
    assert report["coverage"]["probes_run"] == ["forward", "backward", "gradients"]


class DuplicateCodeProbe(Probe):
    """Declares a code and a setting another probe already declares, and needs a fact nobody provides."""

    name = "duplicate"
    description = "a test probe"
    requires = (Fact.AUTOCAST_RUNS,)
    codes = (CodeDoc("saturation", 99, "again", "", "", ""),)
    settings = (Setting("grad_norm_critical", 1.0, "again"),)

    def run(self, ctx):
        return ProbeResult()


def test_the_registry_refuses_a_name_twice_and_a_need_nobody_meets():
    from nandoctor.errors import InternalError
    from nandoctor.probes import check_registry
    from nandoctor.probes.amp import AmpProbe
    from nandoctor.settings import Settings

    check_registry()
    PROBES.append(DuplicateCodeProbe)
    try:
        with pytest.raises(InternalError, match="codes registered twice: saturation"):
            check_registry()
        with pytest.raises(InternalError, match="settings registered twice: grad_norm_critical"):
            check_registry()
        with pytest.raises(InternalError, match="declared twice: grad_norm_critical"):
            Settings()
    finally:
        PROBES.remove(DuplicateCodeProbe)
    position = PROBES.index(AmpProbe)
    PROBES.remove(AmpProbe)  # the only provider of autocast_runs: dynamics needs it
    try:
        with pytest.raises(InternalError, match="dynamics needs autocast_runs, which no probe before it provides"):
            check_registry()
    finally:
        PROBES.insert(position, AmpProbe)
    check_registry()


def test_quick_leaves_out_the_probes_that_train():
    from nandoctor.probes import in_run_order, training_probes

    assert training_probes() == ["dynamics", "steps"]
    assert in_run_order(PROBES) == PROBES  # the one list is written in the order the probes run
