"""The zoo of public architectures (tests/zoo): each injected fault is found among the first two
findings with its location; each healthy twin (and float64 / loss-convention variant) is healthy.

The Hugging Face cases need transformers (``pip install -e .[zoo]``) and are skipped without it;
the pure-torch cases (LSTM, U-Net, MLP) always run.
"""

from __future__ import annotations

import os

import pytest

from tests.zoo import ZOO
from tests.zoo.run import judge, run_case

pytestmark = pytest.mark.slow

# Known misses, kept visible: strict, so a fix shows up as an unexpected pass.
KNOWN_MISSES: dict[str, str] = {}


def _param(case):
    miss = KNOWN_MISSES.get(case.id)
    # strict on the CPU, where CI runs; on a GPU (NANDOCTOR_TEST_DEVICE=cuda) the ViT's numerics differ
    # and the finding fired on an H100: a known borderline, not a fix
    strict = not os.environ.get("NANDOCTOR_TEST_DEVICE")
    return pytest.param(case, id=case.id, marks=[pytest.mark.xfail(strict=strict, reason=miss)] if miss else [])


@pytest.mark.parametrize("case", [_param(c) for c in ZOO])
def test_zoo_case(case):
    for module in case.requires:  # the Hugging Face cases: ("transformers",)
        pytest.importorskip(module)
    report, seconds = run_case(case)
    ok, found = judge(case, report)
    top = [
        (f["code"], f["severity"], {k: v for k, v in f["where"].items() if v is not None})
        for f in report["findings"][:3]
    ]
    if case.code is None:
        assert ok, f"{case.id}: expected a healthy verdict, got {found}; first findings {top}"
    else:
        assert ok, f"{case.id}: expected {case.code} at {case.where} in the first two, got {top}"
