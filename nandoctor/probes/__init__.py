"""The one list of probes, and what is derived from it: run order, the fold table, the ``--probe`` closure.

The runner knows no probe by name: phase, cost, needs, codes, settings and folds live on the
probe. The registry checks itself when it loads and before each run (:func:`check_registry`).
"""

from nandoctor.errors import InternalError
from nandoctor.probes.activations import ActivationsProbe
from nandoctor.probes.amp import AmpProbe
from nandoctor.probes.backward import BackwardProbe
from nandoctor.probes.base import Cost, Fold, Probe
from nandoctor.probes.batchnorm_ranks import BatchNormRanksProbe
from nandoctor.probes.components import ComponentsProbe
from nandoctor.probes.constant_inputs import ConstantInputsProbe
from nandoctor.probes.dead_units import DeadUnitsProbe
from nandoctor.probes.dynamics import DynamicsProbe
from nandoctor.probes.forward import ForwardProbe
from nandoctor.probes.gradient_path import GradientPathProbe
from nandoctor.probes.gradients import GradientsProbe
from nandoctor.probes.inputs import InputsProbe
from nandoctor.probes.labels import LabelsProbe
from nandoctor.probes.parameters import ParametersProbe
from nandoctor.probes.ranks import RanksProbe
from nandoctor.probes.saturation import SaturationProbe
from nandoctor.probes.steps import StepsProbe
from nandoctor.probes.targets import TargetsProbe

PROBES: list[type[Probe]] = [
    RanksProbe,
    BatchNormRanksProbe,
    InputsProbe,
    ConstantInputsProbe,
    ParametersProbe,
    LabelsProbe,
    TargetsProbe,
    ForwardProbe,
    AmpProbe,
    BackwardProbe,
    GradientPathProbe,
    ComponentsProbe,
    ActivationsProbe,
    SaturationProbe,
    DeadUnitsProbe,
    GradientsProbe,
    DynamicsProbe,
    StepsProbe,
]

__all__ = [
    "PROBES",
    "check_registry",
    "fold_rules",
    "in_run_order",
    "probe_names",
    "training_probes",
    "with_dependencies",
]


def probe_names() -> list[str]:
    return [probe.name for probe in PROBES]


def in_run_order(probes: list[type[Probe]]) -> list[type[Probe]]:
    """By phase (``order``), and in registry order within a phase."""
    position = {probe: index for index, probe in enumerate(PROBES)}
    return sorted(probes, key=lambda p: (p.order, position.get(p, len(PROBES))))


def training_probes() -> list[str]:
    """The probes that train the model for many steps: what ``--quick``, ``smoke`` and ``replay`` leave out."""
    return [probe.name for probe in PROBES if probe.cost == Cost.TRAINS]


def check_registry() -> None:
    """A probe, code or setting name registered twice, or a fact that no earlier probe provides, is a
    bug in nandoctor: say which at once rather than drop one silently."""
    problems = []
    for what, names in (
        ("probe", [p.name for p in PROBES]),
        ("code", [doc.code for p in PROBES for doc in p.codes]),
        ("setting", [s.name for p in PROBES for s in p.settings]),
    ):
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            problems.append(f"{what}s registered twice: {', '.join(twice)}")
    provided: set = set()
    for probe in in_run_order(PROBES):
        missing = [fact.value for fact in probe.requires if fact not in provided]
        if missing:
            problems.append(f"probe {probe.name} needs {', '.join(missing)}, which no probe before it provides")
        provided.update(probe.provides)
    if problems:
        raise InternalError("the probe registry is inconsistent: " + "; ".join(problems))


def fold_rules() -> list[Fold]:
    """Every registered probe's fold rules, in registry order."""
    return [rule for probe in PROBES for rule in probe.folds]


def with_dependencies(chosen: list[type[Probe]]) -> tuple[list[type[Probe]], dict[str, str]]:
    """``chosen`` plus every probe that provides a fact they need (transitively), in run order.

    Returns the probes and, for each one pulled in, the probe whose need pulled it in.
    """
    result = list(chosen)
    added: dict[str, str] = {}
    todo = list(chosen)
    while todo:
        probe = todo.pop()
        for fact in probe.requires:
            for provider in PROBES:
                if fact in provider.provides and provider not in result:
                    result.append(provider)
                    added[provider.name] = probe.name
                    todo.append(provider)
    return in_run_order(result), added


check_registry()
