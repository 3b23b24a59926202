"""Every registered probe over every toy problem: plain-data results, no exceptions, no leaks."""

import json

import pytest
import torch

from nandoctor.findings import Finding
from nandoctor.probes import PROBES
from nandoctor.runner import run_probes
from nandoctor.settings import Settings
from nandoctor.spec import validate
from tests.fixtures.models import CASES

BUILDERS = {
    f"{name}-{kind}": builder
    for name, case in CASES.items()
    for kind, builder in (("bad", case.build), ("good", case.twin))
}


@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.name)
def test_probe_declares_itself(probe):
    assert probe.name and probe.description and isinstance(probe.order, int)
    assert isinstance(probe.requires, tuple)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_all_probes_on_every_problem(name):
    setup = validate(BUILDERS[name](), "test:build")
    parts = run_probes(setup, Settings(), PROBES, progress=lambda m: None, debug=True)
    assert all(isinstance(f, Finding) for f in parts["findings"])
    json.dumps(parts["probes"], allow_nan=True)  # raw results are plain data
    for module in setup.model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    assert torch.is_grad_enabled() and not torch.is_anomaly_enabled()
