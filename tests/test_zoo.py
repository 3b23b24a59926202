"""The zoo of public architectures (tests/zoo): each injected fault is found among the first two
findings with its location; each healthy twin (and float64 / loss-convention variant) is healthy.

The Hugging Face cases need transformers (``pip install -e .[zoo]``) and are skipped without it;
the pure-torch cases (LSTM, U-Net, MLP) always run.
"""

from __future__ import annotations

import pytest

from tests.zoo import ZOO
from tests.zoo.run import judge, run_case

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("case", ZOO, ids=[c.id for c in ZOO])
def test_zoo_case(case):
    for module in case.requires:  # the Hugging Face cases: ("transformers",)
        pytest.importorskip(module)
    report, seconds = run_case(case)
    ok, found = judge(case, report)
    top = [(f["code"], f["severity"], {k: v for k, v in f["where"].items() if v is not None})
           for f in report["findings"][:3]]
    if case.code is None:
        assert ok, f"{case.id}: expected a healthy verdict, got {found}; first findings {top}"
    else:
        assert ok, f"{case.id}: expected {case.code} at {case.where} in the first two, got {top}"
