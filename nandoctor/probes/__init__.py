"""The one list of probes. The runner knows no probe by name: order and needs live on the probe."""

from nandoctor.probes.activations import ActivationsProbe
from nandoctor.probes.amp import AmpProbe
from nandoctor.probes.backward import BackwardProbe
from nandoctor.probes.components import ComponentsProbe
from nandoctor.probes.dead_units import DeadUnitsProbe
from nandoctor.probes.dynamics import DynamicsProbe
from nandoctor.probes.forward import ForwardProbe
from nandoctor.probes.gradients import GradientsProbe
from nandoctor.probes.inputs import InputsProbe
from nandoctor.probes.parameters import ParametersProbe
from nandoctor.probes.saturation import SaturationProbe

PROBES = [InputsProbe, ParametersProbe, ForwardProbe, AmpProbe, BackwardProbe, ComponentsProbe,
          ActivationsProbe, SaturationProbe, DeadUnitsProbe, GradientsProbe, DynamicsProbe]

__all__ = ["PROBES", "probe_names"]


def probe_names() -> list[str]:
    return [probe.name for probe in PROBES]
