"""Results schema validation, atomic appends and torn-line repair."""

from __future__ import annotations

import pandas as pd
import pytest

from cmdbench.bench.results import (
    COLUMNS,
    RecordWriter,
    ResultsSchemaError,
    config_hash,
    decode_values,
    encode_values,
    load_records,
    make_row,
    metric_kind,
    read_csv,
    validate,
    write_table_csv,
)


def row(**kw):
    base = {"run_id": "r1", "source": "measured", "generator": "g", "metric": "sampling_time", "value": 1.5,
            "n": 4, "git_dirty": False, "higher_is_better": False, "steps": 2}
    base.update(kw)
    return make_row(**base)


def test_make_row_fills_every_column_and_rejects_unknown():
    r = row()
    assert tuple(r) == COLUMNS
    with pytest.raises(ResultsSchemaError, match="unknown result fields \\['speed'\\]"):
        make_row(speed=1)


def test_validate_casts_to_schema_dtypes():
    df = validate(pd.DataFrame([row(value="2.5", n="3", git_dirty="true")]))
    assert df["value"].dtype == "float64" and df["value"][0] == 2.5
    assert str(df["n"].dtype) == "Int64" and df["n"][0] == 3
    assert bool(df["git_dirty"][0]) is True


def test_validate_names_missing_columns():
    df = pd.DataFrame([row()]).drop(columns=["metric", "seeds"])
    with pytest.raises(ResultsSchemaError, match="missing columns \\['metric', 'seeds'\\]"):
        validate(df)


def test_validate_names_unknown_columns():
    df = pd.DataFrame([row()]).assign(colour="red")
    with pytest.raises(ResultsSchemaError, match="unknown columns \\['colour'\\]"):
        validate(df)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [("value", "fast", "column 'value' row 0 holds 'fast'"), ("n", "2.5", "not an integer"),
     ("git_dirty", "maybe", "git_dirty"), ("source", "guessed", "allowed"), ("generator", "", "required"),
     ("value", None, "required column 'value'")],
)
def test_validate_rejects_wrong_types(field, value, match):
    with pytest.raises(ResultsSchemaError, match=match):
        validate(pd.DataFrame([row(**{field: value})]))


def test_append_and_read_back(records_dir):
    w = RecordWriter(records_dir, "r1")
    assert w.append([row(value=1.0), row(value=2.0, metric="peak_memory")]) == 2
    assert w.append([row(value=3.0)]) == 1
    df = read_csv(w.csv_path)
    assert list(df["value"]) == [1.0, 2.0, 3.0]
    assert w.csv_path.read_text().count("run_id") == 1  # one header
    assert len(w.existing()) == 3


def test_append_validates_before_writing(records_dir):
    w = RecordWriter(records_dir, "r1")
    w.append([row()])
    before = w.csv_path.read_bytes()
    with pytest.raises(ResultsSchemaError):
        w.append([row(), row(value="oops")])
    assert w.csv_path.read_bytes() == before  # nothing of the bad batch was written


def test_torn_last_line_is_repaired(records_dir):
    w = RecordWriter(records_dir, "r1")
    w.append([row(value=1.0), row(value=2.0)])
    with open(w.csv_path, "a") as f:
        f.write("r1,2026-01-01T00:00:00Z,meas")  # a writer killed mid-line
    w2 = RecordWriter(records_dir, "r1")
    assert list(w2.existing()["value"]) == [1.0, 2.0]
    w2.append([row(value=3.0)])
    assert list(read_csv(w2.csv_path)["value"]) == [1.0, 2.0, 3.0]


def test_meta_is_written_atomically(records_dir):
    w = RecordWriter(records_dir, "r1")
    w.write_meta({"config": {"a": 1}})
    w.write_meta({"config": {"a": 2}})
    assert '"a": 2' in w.meta_path.read_text()
    assert not list(records_dir.glob("*.tmp"))


def test_unwritable_record_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="cannot be created"):
        RecordWriter(blocker / "records", "r1")


def test_load_records_reads_directories_and_reports_bad_files(records_dir, tmp_path):
    RecordWriter(records_dir, "a").append([row(run_id="a")])
    RecordWriter(records_dir / "sub", "b").append([row(run_id="b")])
    assert sorted(load_records(records_dir)["run_id"]) == ["a", "b"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_records(tmp_path / "nowhere")
    bad = tmp_path / "bad.csv"
    pd.DataFrame([row()]).drop(columns=["metric"]).to_csv(bad, index=False)
    with pytest.raises(ResultsSchemaError, match="bad.csv: missing columns \\['metric'\\]"):
        load_records(bad)


def test_write_table_csv_round_trip(tmp_path):
    df = validate(pd.DataFrame([row(), row(value=2.0, git_dirty=None)]))
    path = write_table_csv(df, tmp_path / "t" / "paper.csv")
    back = read_csv(path)
    pd.testing.assert_frame_equal(back, df)


# --- Raw repeats (the ``values`` column) ----------------------------------------------------------------


def test_values_round_trip_exactly_and_old_files_without_the_column_read(records_dir):
    raw = [0.1 + 0.2, 1 / 3, 2.5e-7]
    w = RecordWriter(records_dir, "r1")
    w.append([row(values=raw), row(metric="peak_memory")])
    df = read_csv(w.csv_path)
    assert decode_values(df["values"][0]) == tuple(raw)  # repr round trip: bit-exact floats
    assert decode_values(df["values"][1]) == ()
    old = records_dir / "old.csv"
    pd.DataFrame([row()]).drop(columns=["values"]).to_csv(old, index=False)
    assert read_csv(old)["values"].isna().all()


def test_values_are_validated():
    with pytest.raises(ResultsSchemaError, match="NaN or inf"):
        row(values=[1.0, float("nan")])
    with pytest.raises(ResultsSchemaError, match="column 'values' row 0"):
        validate(pd.DataFrame([{**row(), "values": "[1.0, 'x']"}]))
    assert encode_values([]) is None and encode_values(None) is None


def test_appending_to_a_file_from_before_the_values_column_upgrades_its_header(records_dir):
    path = records_dir / "r1.csv"
    pd.DataFrame([row(value=1.0)]).drop(columns=["values"]).to_csv(path, index=False)
    w = RecordWriter(records_dir, "r1")
    w.append([row(value=2.0, values=[2.0, 2.1, 1.9])])
    df = read_csv(path)
    assert list(df["value"]) == [1.0, 2.0] and decode_values(df["values"][1]) == (2.0, 2.1, 1.9)


# --- Identity --------------------------------------------------------------------------------------------

ENV = {"device": "cpu", "tf32_matmul": False, "tf32_cudnn": True, "float32_matmul_precision": "highest",
       "device_name": "cpu: A (2 threads, mkl)"}


def test_metric_kind():
    assert [metric_kind(m) for m in ("sampling_time", "stage_time/denoiser", "kernel_time/frechet_d400",
                                     "peak_memory", "predicted_peak_memory/denoiser", "tmacs_paper", "params",
                                     "fvd2048_16f", "clipsim")] == \
        ["timed", "timed", "timed", "memory", "exact", "exact", "exact", "quality", "quality"]


def test_config_hash_seeds_count_for_quality_not_for_cost():
    time_a = config_hash(row(seeds="0-7"), ENV)
    assert config_hash(row(seeds="100-107"), ENV) == time_a  # a timing does not depend on the seeds
    assert config_hash(row(seeds="0-7"), ENV, samples={"prompts": ["x"]}) == time_a
    fvd = dict(row(metric="fvd2048_16f", seeds="0-7"))
    assert config_hash({**fvd, "seeds": "100-107"}, ENV) != config_hash(fvd, ENV)
    assert config_hash(fvd, ENV, samples={"prompts": ["x"]}) != config_hash(fvd, ENV, samples={"prompts": ["y"]})


@pytest.mark.parametrize("change", [
    {"extra": {"extractor_checksum": "other"}}, {"extra": {"reference_key": "ucf-test"}},
    {"extra": {"protocol_hash": "p2"}}, {"extra": {"weights_sha256": "clip2"}},
    {"env": {"device": "cuda:0"}}, {"env": {"tf32_matmul": True}}, {"env": {"float32_matmul_precision": "high"}},
    {"row": {"dtype": "float16"}}, {"row": {"protocol": "tats"}}, {"row": {"steps": 50}},
    {"context": {"tiny": True}},
])
def test_config_hash_covers_what_makes_numbers_comparable(change):
    fvd = dict(row(metric="fvd2048_16f", protocol="stylegan-v", dtype="float32"))
    extra = {"extractor_checksum": "e1", "reference_key": "ucf-train", "protocol_hash": "p1", "weights_sha256": "c1"}
    base = config_hash(fvd, ENV, extra=extra)
    h = config_hash({**fvd, **change.get("row", {})}, {**ENV, **change.get("env", {})},
                    extra={**extra, **change.get("extra", {})}, context=change.get("context"))
    assert h != base


def test_config_hash_leaves_out_the_concrete_device_and_run_state():
    base = config_hash(row(), ENV)
    assert config_hash(row(run_id="r9", git_sha="b" * 40, created_utc="2030"), {**ENV, "device_name": "cpu: B",
                                                                                 "device": "cpu"}) == base
