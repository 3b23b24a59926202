"""The one list of probes, and what is derived from it: the fold table and the ``--probe`` closure.

The runner knows no probe by name: order, needs, codes, settings and folds live on the probe.
"""

from nandoctor.probes.activations import ActivationsProbe
from nandoctor.probes.amp import AmpProbe
from nandoctor.probes.backward import BackwardProbe
from nandoctor.probes.base import Fold, Probe
from nandoctor.probes.components import ComponentsProbe
from nandoctor.probes.dead_units import DeadUnitsProbe
from nandoctor.probes.dynamics import DynamicsProbe
from nandoctor.probes.forward import ForwardProbe
from nandoctor.probes.gradients import GradientsProbe
from nandoctor.probes.inputs import InputsProbe
from nandoctor.probes.labels import LabelsProbe
from nandoctor.probes.parameters import ParametersProbe
from nandoctor.probes.saturation import SaturationProbe
from nandoctor.probes.steps import StepsProbe

PROBES: list[type[Probe]] = [
    InputsProbe, ParametersProbe, LabelsProbe, ForwardProbe, AmpProbe, BackwardProbe, ComponentsProbe,
    ActivationsProbe, SaturationProbe, DeadUnitsProbe, GradientsProbe, DynamicsProbe,
    StepsProbe,
]

__all__ = ["PROBES", "fold_rules", "probe_names", "with_dependencies"]


def probe_names() -> list[str]:
    return [probe.name for probe in PROBES]


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
    return sorted(result, key=lambda p: p.order), added
