"""Setups a user has that must not be called broken (issue 19): the caller's grad mode, ..."""

from __future__ import annotations

import pytest
import torch

import nandoctor
from nandoctor.errors import UsageError

HEALTHY = "nandoctor.examples.healthy:build"


@pytest.mark.parametrize("block", [torch.no_grad, lambda: torch.set_grad_enabled(False), torch.inference_mode],
                         ids=["no_grad", "set_grad_enabled_false", "inference_mode"])
def test_diagnose_inside_a_no_gradient_block_turns_gradients_on_for_itself(block):
    with block():
        report = nandoctor.diagnose(HEALTHY, quick=True, progress=False)
        assert not torch.is_grad_enabled()  # the caller's mode is back
    assert report.verdict == "healthy", [(f.code, f.title) for f in report.findings]
    assert not report.coverage["probes_not_run"]


def test_a_model_built_under_inference_mode_is_one_clear_usage_error():
    from nandoctor.examples.healthy import build

    with torch.inference_mode():
        built = build()
    with pytest.raises(UsageError, match="inference_mode"):
        nandoctor.diagnose(built, quick=True, progress=False)
