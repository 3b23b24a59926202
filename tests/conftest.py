import pytest

from nandoctor.probes import PROBES
from nandoctor.runner import build_report, run_probes
from nandoctor.settings import Settings
from nandoctor.spec import validate


def diagnose_setup(result, settings=None, probes=None):
    setup = validate(result, "test:build")
    parts = run_probes(setup, settings or Settings(), probes or sorted(PROBES, key=lambda p: p.order),
                       progress=lambda message: None, debug=True)
    return build_report("test:build", parts)


@pytest.fixture
def diagnose():
    return diagnose_setup


@pytest.fixture(autouse=True)
def seeded():
    """Builders draw their init from torch's global RNG: seed it, as the CLI does before building."""
    import torch

    torch.manual_seed(0)
