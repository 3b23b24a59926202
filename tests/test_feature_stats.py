"""feature-stats: streaming statistics, flags, --emit-norm, and bad input, end to end."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from nandoctor.cli import app
from nandoctor.featurestats.columns import SAMPLE_SIZE, StreamingColumn

runner = CliRunner()


def pulse_table(rows=60_000, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "time": rng.uniform(5714, 77785, rows),
            "charge": np.clip(rng.lognormal(0, 1.2, rows), 0.025, 2762),
            "sensor_id": rng.integers(0, 5160, rows),
            "auxiliary": rng.integers(0, 2, rows),
            "dom_x": rng.normal(0, 1, rows),
            "detector": ["ic86"] * rows,
        }
    )


@pytest.fixture(scope="module")
def pulses(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "batch_1.parquet"
    pulse_table().to_parquet(path, row_group_size=7_000)
    return path


def run(*args):
    return runner.invoke(app, ["feature-stats", *map(str, args)])


def test_chunked_moments_match_numpy():
    rng = np.random.default_rng(1)
    values = rng.normal(1e4, 50.0, 100_000)  # a large offset: the naive sum-of-squares loses digits
    column = StreamingColumn("x", "double")
    for chunk in np.array_split(values, 37):
        column.add(chunk)
    summary = column.summary()
    assert summary.mean == pytest.approx(values.mean(), rel=1e-12)
    assert summary.std == pytest.approx(values.std(), rel=1e-9)
    assert (summary.min, summary.max) == (values.min(), values.max())
    assert summary.p50 == pytest.approx(np.median(values), abs=2.0)


def test_sample_stays_bounded():
    column = StreamingColumn("x", "double")
    for seed in range(12):
        column.add(np.random.default_rng(seed).uniform(0, 1, 50_000))
    assert column.sample.size == SAMPLE_SIZE
    summary = column.summary()
    assert summary.p1 == pytest.approx(0.01, abs=0.005) and summary.p99 == pytest.approx(0.99, abs=0.005)


def test_pulse_table_flags_time_sensor_id_and_charge_tail(pulses):
    result = run(pulses, "--format", "json")
    assert result.exit_code == 0, result.output
    columns = json.loads(result.stdout)["columns"]
    flags = {name: {f["flag"] for f in c["flags"]} for name, c in columns.items()}
    assert "not_normalized" in flags["time"]
    assert "integer_ids" in flags["sensor_id"]
    assert "heavy_tail" in flags["charge"]
    assert flags["auxiliary"] == set() and flags["dom_x"] == set()
    assert "detector" not in columns  # text column skipped
    assert columns["time"]["count"] == 60_000 and columns["sensor_id"]["distinct_capped"]


def test_table_output_names_flags_and_skipped_columns(pulses):
    result = run(pulses)
    assert result.exit_code == 0
    assert "time" in result.stdout and "not_normalized" in result.stdout
    assert "not numeric, skipped: detector" in result.stdout


def test_emit_norm_yaml_gives_mean_and_std(pulses):
    result = run(pulses, "--emit-norm", "yaml")
    norm = yaml.safe_load(result.stdout)
    frame = pulse_table()
    assert norm["time"]["mean"] == pytest.approx(frame.time.mean(), rel=1e-5)
    assert norm["time"]["std"] == pytest.approx(frame.time.std(ddof=0), rel=1e-5)
    assert norm["sensor_id"]["mean"] == pytest.approx(frame.sensor_id.mean(), rel=1e-5)
    assert norm["charge"]["transform"] == "log1p"


def test_emit_norm_python_is_pasteable(pulses):
    import torch
    from torch import nn

    result = run(pulses, "--emit-norm", "python", "--columns", "time,sensor_id")
    module = nn.Module()
    exec(result.stdout.replace("self.", "module."), {"module": module, "torch": torch})
    assert module.feature_mean.shape == (2,)
    assert module.feature_mean[0].item() == pytest.approx(pulse_table().time.mean(), rel=1e-5)


def test_columns_limit_rows_csv_and_tsv(tmp_path):
    frame = pulse_table(rows=2_000)
    frame.to_csv(tmp_path / "a.csv", index=False)
    frame.to_csv(tmp_path / "b.tsv", index=False, sep="\t")
    result = run(tmp_path / "a.csv", tmp_path / "b.tsv", "--columns", "time,charge", "--format", "json")
    data = json.loads(result.stdout)
    assert set(data["columns"]) == {"time", "charge"} and data["rows"] == 4_000
    limited = json.loads(run(f"{tmp_path}/*.csv", "--limit-rows", "100", "--format", "json").stdout)
    assert limited["rows"] == 100


def test_missing_values_are_counted(tmp_path):
    frame = pd.DataFrame({"x": [1.0, np.nan, 3.0, np.inf], "k": pd.array([1, None, 3, 4], dtype="Int64")})
    frame.to_parquet(tmp_path / "m.parquet")
    columns = json.loads(run(tmp_path / "m.parquet", "--format", "json").stdout)["columns"]
    assert (columns["x"]["missing"], columns["x"]["posinf"], columns["x"]["count"]) == (1, 1, 2)
    assert columns["k"]["missing"] == 1 and columns["k"]["count"] == 3
    assert columns["x"]["flags"][0]["flag"] == "nonfinite"


def test_one_bad_file_is_reported_and_the_rest_analysed(tmp_path, pulses):
    good = tmp_path / "good.parquet"
    good.write_bytes(pulses.read_bytes())
    (tmp_path / "truncated.parquet").write_bytes(pulses.read_bytes()[:4000])
    result = run(tmp_path, "--format", "json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["rows"] == 60_000 and "truncated.parquet" in " ".join(data["errors"])
    assert "skipping" in result.stderr


@pytest.mark.parametrize(
    "suffix, make, message",
    [
        (".csv", lambda p: None, "no such file or folder"),
        (".csv", lambda p: p.write_text(""), "Empty CSV"),
        (".parquet", lambda p: p.write_bytes(b"PAR1 not really"), "no file could be read"),
        (".csv", lambda p: p.write_text("name,city\na,b\n"), "no numeric columns (non-numeric: city, name)"),
    ],
)
def test_unusable_input_exits_2_with_one_line(tmp_path, suffix, make, message):
    path = tmp_path / f"input{suffix}"
    make(path)
    result = run(path)
    assert result.exit_code == 2
    error = [line for line in result.stderr.splitlines() if line.startswith("nandoctor: error:")]
    assert len(error) == 1 and message in error[0], result.stderr
    assert "Traceback" not in result.output


def test_folder_without_data_files(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    assert run(tmp_path).exit_code == 2


def _flags(result):
    return {name: {f["flag"] for f in c["flags"]} for name, c in json.loads(result.stdout)["columns"].items()}


def test_all_nan_csv_column_and_null_parquet_column_are_flagged_nonfinite(tmp_path):
    csv = tmp_path / "a.csv"
    csv.write_text("x,broken\n" + "".join(f"{i},nan\n" for i in range(50)))
    flags = _flags(run(csv, "--format", "json"))
    assert "nonfinite" in flags["broken"]
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "b.parquet"
    pq.write_table(pa.table({"x": pa.array(np.arange(50.0)), "empty": pa.nulls(50)}), parquet)
    result = run(parquet, "--format", "json")
    assert "nonfinite" in _flags(result)["empty"]
    assert json.loads(result.stdout)["columns"]["empty"]["missing"] == 50


def test_a_file_without_rows_says_so(tmp_path):
    path = tmp_path / "empty.parquet"
    pd.DataFrame({"x": np.array([], dtype=float), "y": np.array([], dtype=np.int64)}).to_parquet(path)
    result = run(path)
    assert result.exit_code == 2 and "the files hold no rows" in result.stderr


def test_a_column_numeric_in_one_file_and_text_in_another_is_flagged(tmp_path):
    (tmp_path / "a.csv").write_text("x,y\n" + "".join(f"{i},{i * 0.5}\n" for i in range(40)))
    (tmp_path / "b.csv").write_text("x,y\n" + "".join(f"{i},n/a-{i}\n" for i in range(30)))
    result = run(tmp_path, "--format", "json")
    columns = json.loads(result.stdout)["columns"]
    flag = next(f for f in columns["y"]["flags"] if f["flag"] == "mixed_types")
    assert "30 rows" in flag["reason"] and "b.csv" in flag["reason"]
    assert run(tmp_path, "--fail-on", "critical").exit_code == 1


def test_values_near_the_float64_limit_give_finite_statistics(tmp_path):
    path = tmp_path / "huge.parquet"
    rng = np.random.default_rng(0)
    pd.DataFrame({"v": rng.uniform(-1.0, 1.0, 5000) * 1.7e308}).to_parquet(path)
    import warnings

    from nandoctor.featurestats.files import analyse

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy overflow warnings fail the test
        column = analyse([str(path)], progress=lambda message: None)["columns"]["v"]
    for key in ("mean", "std", "p1", "p50", "p99"):
        assert np.isfinite(column[key]), key
    assert column["std"] == pytest.approx(1.7e308 / 3**0.5, rel=0.05)


def test_fail_on_exits_1_when_a_column_is_flagged(pulses, tmp_path):
    assert run(pulses).exit_code == 0  # flags alone do not fail, as before
    assert run(pulses, "--fail-on", "warning").exit_code == 1  # time is not normalized
    assert run(pulses, "--fail-on", "critical").exit_code == 0  # nothing critical
    clean = tmp_path / "clean.parquet"
    pd.DataFrame({"a": np.random.default_rng(0).normal(0, 1, 1000)}).to_parquet(clean)
    assert run(clean, "--fail-on", "info").exit_code == 0
    assert run(pulses, "--fail-on", "sometimes").exit_code == 2
