import os

import pytest

from nandoctor.probes import PROBES
from nandoctor.runner import build_report, run_probes
from nandoctor.settings import Settings
from nandoctor.spec import validate


def on_test_device(result):
    """The build result, run on ``NANDOCTOR_TEST_DEVICE`` (``cuda`` on a GPU machine) unless it names a device."""
    device = os.environ.get("NANDOCTOR_TEST_DEVICE")
    if device and isinstance(result, dict) and "device" not in result:
        return dict(result, device=device)
    return result


#: the detector tests run without the sweep's long rung: it changes only which rate a rate fix names
#: (and adds an info hint), and it doubles a diagnose; tests/test_long_rung.py, the LR tests and the
#: zoo keep it (the zoo runs the product's defaults)
DETECTOR_SETTINGS = {"sweep_long_factor": 0}


def diagnose_setup(result, settings=None, probes=None):
    setup = validate(on_test_device(result), "test:build")
    parts = run_probes(
        setup,
        settings or Settings(**DETECTOR_SETTINGS),
        probes or sorted(PROBES, key=lambda p: p.order),
        progress=lambda message: None,
        debug=True,
    )
    return build_report("test:build", parts).to_dict()


@pytest.fixture
def diagnose():
    return diagnose_setup


@pytest.fixture(autouse=True)
def seeded():
    """Builders draw their init from torch's global RNG: seed it, as the CLI does before building."""
    import torch

    torch.manual_seed(0)
