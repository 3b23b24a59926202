"""nandoctor leaves what it diagnoses as it found it, run after run, at one copy of the weights.

Every embedded example and every fixture (broken and repaired) goes through ``diagnose`` twice
in one process; after each run the model (values, the tensor objects in each module's slots,
grads, modes, hooks), the global RNG streams and ``sys.modules`` are as before.
"""

from __future__ import annotations

import gc
import importlib
import random
import sys
import weakref

import numpy
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nandoctor.examples import EXAMPLES
from nandoctor.probes import PROBES
from nandoctor.render.common import render_json
from nandoctor.runner import run_probes
from nandoctor.settings import Settings
from nandoctor.spec import validate
from tests.conftest import diagnose_setup
from tests.fixtures import all_cases
from tests.fixtures.dynamics import DYNAMICS_CASES

QUICK = [p for p in sorted(PROBES, key=lambda p: p.order) if p.name != "dynamics"]
_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)
_GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


class CallCounter(nn.Module):
    """Reassigns its buffers in forward: a call count and an EMA of the input mean."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("running_mean", torch.zeros(6))
        self.proj = nn.Linear(6, 1)

    def forward(self, x):
        self.calls = self.calls + 1
        self.running_mean = 0.9 * self.running_mean + 0.1 * x.detach().mean(0)
        return self.proj(x - self.running_mean)


class FrozenNormNet(nn.Module):
    """A BatchNorm the user froze (eval mode, no grad) inside a model that trains."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 8, 3, padding=1)
        self.norm = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 2)
        self.norm.eval()
        self.norm.requires_grad_(False)
        self.norm_modes: list[bool] = []

    def forward(self, x):
        self.norm_modes.append(self.norm.training)
        return self.head(torch.relu(self.norm(self.conv(x))).mean(-1))


def counter_setup():
    g = torch.Generator().manual_seed(3)
    data = [(torch.randn(16, 6, generator=g), torch.randn(16, 1, generator=g)) for _ in range(3)]
    model = CallCounter()
    model.proj.weight.grad = torch.full_like(model.proj.weight, 0.25)  # arrives with a gradient
    return {"model": model, "data": data, "loss": lambda m, b: F.mse_loss(m(b[0]), b[1])}


def frozen_norm_setup():
    g = torch.Generator().manual_seed(4)
    data = [(torch.randn(8, 3, 20, generator=g), torch.randint(0, 2, (8,), generator=g)) for _ in range(3)]
    return {"model": FrozenNormNet(), "data": data, "loss": lambda m, b: F.cross_entropy(m(b[0]), b[1])}


def _builders() -> dict:
    builders = {f"example:{name}": importlib.import_module(f"nandoctor.examples.{name}").build for name in EXAMPLES}
    for name, case in all_cases().items():
        builders[f"{name}:bad"], builders[f"{name}:twin"] = case.build, case.twin
    builders["extra:reassigned_buffers"] = counter_setup
    builders["extra:frozen_norm"] = frozen_norm_setup
    return builders


BUILDERS = _builders()


def model_state(model: nn.Module) -> dict:
    """Everything diagnose must leave alone, as comparable plain data (tensors cloned)."""
    slots = {}
    for name, module in model.named_modules():
        for kind in ("_parameters", "_buffers"):
            for key, tensor in getattr(module, kind).items():
                slots[(name, key)] = (
                    None
                    if tensor is None
                    else (
                        id(tensor),
                        tensor.detach().clone(),
                        tensor.requires_grad,
                        None if tensor.grad is None else (id(tensor.grad), tensor.grad.clone()),
                        len(tensor._backward_hooks or {}),
                    )
                )
    return {
        "slots": slots,
        "modules": {
            name: (id(module), module.training, tuple(len(getattr(module, d)) for d in _HOOK_DICTS))
            for name, module in model.named_modules()
        },
    }


def global_state() -> dict:
    from torch.nn.modules import module

    return {
        "torch_rng": torch.random.get_rng_state().clone(),
        "python_rng": random.getstate(),
        "numpy_rng": numpy.random.get_state()[1].copy(),
        "grad": torch.is_grad_enabled(),
        "dtype": torch.get_default_dtype(),
        "anomaly": torch.is_anomaly_enabled(),
        "global_hooks": [len(getattr(module, name)) for name in _GLOBAL_HOOKS],
    }


def same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal shape, dtype, device and values, NaN where NaN was (meta tensors hold no values)."""
    if (a.shape, a.dtype, a.device) != (b.shape, b.dtype, b.device):
        return False
    if a.is_meta:
        return True
    both_nan = torch.isnan(a) & torch.isnan(b) if a.is_floating_point() else torch.zeros_like(a, dtype=torch.bool)
    return bool(((a == b) | both_nan).all())


def assert_same(before, after, where: str) -> None:
    assert before.keys() == after.keys(), where
    for key, value in before.items():
        other = after[key]
        if isinstance(value, dict):
            assert_same(value, other, f"{where}/{key}")
        elif isinstance(value, torch.Tensor):
            assert same_tensor(value, other), f"{where}/{key}"
        elif isinstance(value, numpy.ndarray):
            assert (value == other).all(), f"{where}/{key}"
        elif isinstance(value, tuple):
            assert len(value) == len(other), f"{where}/{key}"
            assert_same(dict(enumerate(value)), dict(enumerate(other)), f"{where}/{key}")
        else:
            assert value == other, f"{where}/{key}: {value!r} != {other!r}"


@pytest.fixture(scope="module")
def warmed_up():
    """One run first, so that modules nandoctor imports lazily are already in sys.modules."""
    diagnose_setup(counter_setup())


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_two_runs_leave_everything_as_found(name, warmed_up):
    torch.manual_seed(0)
    built = BUILDERS[name]()
    probes = None if name.split(":")[0] in DYNAMICS_CASES else QUICK  # the sweep runs where it is the point
    model = built["model"]
    modules = set(sys.modules)
    torch.manual_seed(1234)
    random.seed(1234)
    before, globals_before = model_state(model), global_state()
    reports = []
    for run in range(2):
        reports.append(diagnose_setup(dict(built), probes=probes))
        assert_same(before, model_state(model), f"{name} run {run + 1}: model")
        assert_same(globals_before, global_state(), f"{name} run {run + 1}: globals")
        assert set(sys.modules) == modules, set(sys.modules) ^ modules
    first, second = (render_json(report) for report in reports)  # NaN == NaN as JSON text
    assert first == second  # deterministic, and the first run changed nothing the second sees


def test_reassigned_buffers_go_back_into_their_slots():
    built = counter_setup()
    model = built["model"]
    calls, running_mean = model.calls, model.running_mean
    diagnose_setup(built, probes=QUICK)
    assert model._buffers["calls"] is calls and int(calls) == 0
    assert model._buffers["running_mean"] is running_mean and not running_mean.any()


def test_a_frozen_norm_stays_frozen_in_every_probe():
    built = frozen_norm_setup()
    model = built["model"]
    report = diagnose_setup(built, probes=QUICK)
    assert model.norm_modes and not any(model.norm_modes), "a probe put the frozen BatchNorm in train mode"
    assert not model.norm.training and model.training
    assert report["verdict"] == "healthy", report["findings"]


def test_whole_model_in_eval_mode_stays_in_eval_mode():
    built = frozen_norm_setup()
    built["model"].eval()
    diagnose_setup(built, probes=QUICK)
    assert not any(built["model"].norm_modes) and not built["model"].training


class Residual(nn.Module):
    """``a``'s output feeds only an add: autograd keeps nothing of it."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 1)

    def forward(self, x):
        return self.b(self.a(x) + 1.0)


def test_the_traced_pass_holds_no_module_output():
    model, alive = Residual(), []
    refs = []
    model.a.register_forward_hook(lambda module, args, output: refs.append(weakref.ref(output)))

    def loss(m, batch):
        prediction = m(batch[0])
        gc.collect()
        alive.append(refs[-1]() is not None)  # after the forward, before the backward
        return F.mse_loss(prediction, batch[1])

    data = [(torch.randn(8, 4), torch.randn(8, 1)) for _ in range(2)]
    diagnose_setup({"model": model, "data": data, "loss": loss}, probes=[p for p in QUICK if p.name in ("forward",)])
    assert alive and not any(alive)


def test_one_weight_copy_serves_the_whole_run(monkeypatch):
    from nandoctor import state

    copies = []
    original = state.ModelSnapshot.__init__

    def counting(self, model):
        copies.append(sum(t.numel() for t in model.parameters()))
        original(self, model)

    monkeypatch.setattr(state.ModelSnapshot, "__init__", counting)
    setup = validate(counter_setup(), "test:build")
    run_probes(setup, Settings(), QUICK, progress=lambda message: None)
    assert len(copies) == 1  # not one per probe


def test_nonfinite_output_is_still_counted_without_holding_outputs(diagnose):
    from tests.fixtures.models import CASES

    finding = diagnose(CASES["pool_div_zero"].build(), probes=QUICK)["findings"][0]
    assert finding["evidence"]["nan"] > 0 and finding["evidence"]["numel"] > finding["evidence"]["nan"]
