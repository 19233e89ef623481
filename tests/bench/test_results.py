"""Results schema validation, atomic appends and torn-line repair."""

from __future__ import annotations

import pandas as pd
import pytest

from cmdbench.bench.results import (
    COLUMNS,
    RecordWriter,
    ResultsSchemaError,
    load_records,
    make_row,
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
