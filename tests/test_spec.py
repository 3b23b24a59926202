"""Spec loading exactly as CONTRACT.md §1, and one clear error for every way it can be wrong."""

import sys
from pathlib import Path

import pytest
import torch

from nandoctor.errors import UsageError
from nandoctor.spec import load, parse_overrides, parse_value

SPECS = Path(__file__).parent / "specs"


@pytest.mark.parametrize(
    "text, value",
    [
        ("3", 3),
        ("1e-3", 0.001),
        ("fp16", "fp16"),
        ("true", True),
        ("null", None),
        ("-2.5", -2.5),
        ("hello world", "hello world"),
        ("[1, 2]", [1, 2]),
    ],
)
def test_set_values_are_yaml_scalars_with_python_numbers(text, value):
    assert parse_value(text) == value


def test_overrides_need_key_equals_value():
    assert parse_overrides(["steps=3", "lr=1e-3", "amp=null"]) == {"steps": 3, "lr": 0.001, "amp": None}
    with pytest.raises(UsageError, match="key=value"):
        parse_overrides(["steps"])


def test_file_spec_with_sibling_import_and_overrides():
    setup = load(f"{SPECS}/good_spec.py:build", ["steps=3", "lr=1e-4", "amp=fp16", "fixed=true"])
    assert len(setup.data) == 3 and setup.lr == 1e-4 and setup.amp == "fp16"
    assert setup.config == {"fixed": True, "name": "x"}
    assert setup.device == torch.device("cpu") and setup.grad_clip is None
    assert str(SPECS) not in sys.path  # the file's folder is on sys.path only while importing


def test_relative_file_spec(monkeypatch):
    monkeypatch.chdir(SPECS.parent)
    assert load("specs/good_spec.py:build").lr == 1e-3


def test_module_spec_and_object_form(monkeypatch):
    monkeypatch.chdir(SPECS)
    setup = load("good_spec:build_object")
    assert isinstance(setup.model, torch.nn.Linear) and setup.loss is not None
    assert load("nandoctor.examples.healthy:build").lr == 1e-3


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nope.py:build", "no such file: nope.py"),
        ("model.py", "bad SPEC"),
        (f"{SPECS}/good_spec.py:missing", "has no function 'missing'"),
        (f"{SPECS}/good_spec.py:build_raises", "raised ValueError: dataset path /data/train.parquet not found \\(at "),
        (f"{SPECS}/broken_import.py:build", "importing .* raised RuntimeError: CUDA_VISIBLE_DEVICES"),
        (f"{SPECS}/good_spec.py:build_not_a_module", "'model' must be a torch.nn.Module"),
        (f"{SPECS}/good_spec.py:build_no_data", "no 'data'"),
        (f"{SPECS}/good_spec.py:build_list", "expected a dict"),
        (f"{SPECS}/good_spec.py:build_bad_amp", "'amp' must be"),
        ("no_such_package_xyz.mod:build", "no module named"),
    ],
)
def test_bad_specs_raise_one_clear_line(spec, message):
    with pytest.raises(UsageError, match=message) as info:
        load(spec)
    assert "\n" not in str(info.value)


def test_error_points_into_the_users_file():
    with pytest.raises(UsageError) as info:
        load(f"{SPECS}/good_spec.py:build_raises")
    assert "good_spec.py:" in str(info.value)


def test_unknown_set_key_is_a_usage_error():
    with pytest.raises(UsageError, match="does not accept"):
        load(f"{SPECS}/good_spec.py:build", ["batch_size=3"])
