"""Records -> pandas pivots -> markdown and LaTeX tables.

``pivot`` is the one generic reshaping (no silent aggregation: duplicate cells are an error unless an
``aggfunc`` is named; a metric's label carries its unit, ``sampling_time [s/video]``, so two meanings of
one name never share a column); ``paper_vs_measured`` puts the paper's numbers (``source = "paper"``) beside
reproduced ones (``source = "measured"``) with a ratio column. Writers are atomic and deterministic
(sorted rows and columns, fixed number format), so a stale committed table is detectable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from cmdbench.bench.results import COLUMNS

DEFAULT_JOIN = ("generator", "metric", "dataset", "num_frames", "height", "width")


class TableError(ValueError):
    """A table request that the records cannot answer (unknown column, duplicate cells, no rows)."""


def _check_columns(records: pd.DataFrame, names: Sequence[str], what: str) -> None:
    unknown = [n for n in names if n not in records.columns]
    if unknown:
        raise TableError(f"{what}: unknown columns {unknown}; allowed {list(COLUMNS)}")


def pivot(
    records: pd.DataFrame,
    index: str | Sequence[str],
    columns: str | Sequence[str],
    values: str = "value",
    *,
    aggfunc: str | None = None,
    units: bool = True,
) -> pd.DataFrame:
    """Reshape tidy records into a table. Duplicate (index, columns) cells raise unless ``aggfunc``
    (e.g. ``"median"``, ``"last"``) says how to combine them.

    units: when ``metric`` is a key and ``unit`` is not, label each metric with its unit
    (``"peak_memory [GiB]"``); rows of one metric name in two units land in two labelled columns.
    """
    index = [index] if isinstance(index, str) else list(index)
    columns = [columns] if isinstance(columns, str) else list(columns)
    _check_columns(records, [*index, *columns, values], "pivot")
    if records.empty:
        raise TableError("pivot: no records to tabulate")
    keys = index + columns
    if units and "metric" in keys and "unit" not in keys:
        records = records.assign(metric=with_unit(records["metric"], records["unit"]))
    if aggfunc is None:
        dup = records.duplicated(subset=keys, keep=False)
        if dup.any():
            example = records.loc[dup, keys].iloc[0].to_dict()
            raise TableError(
                f"pivot: {int(dup.sum())} records share a cell, e.g. {example}; filter them or pass aggfunc "
                "('median', 'mean', 'last', ...)"
            )
        aggfunc = "first"
    frame = records[keys + [values]].copy()
    for k in keys:  # pandas drops NA keys from groupings: make them visible instead
        frame[k] = frame[k].astype("string").fillna("")
    table = frame.pivot_table(index=index, columns=columns, values=values, aggfunc=aggfunc, sort=True)
    if isinstance(table.columns, pd.MultiIndex) and len(columns) == 1:
        table.columns = table.columns.get_level_values(-1)
    table.columns.name = None
    return table.reset_index()


def with_unit(metric: pd.Series, unit: pd.Series) -> pd.Series:
    """``"sampling_time"`` + ``"s/video"`` -> ``"sampling_time [s/video]"`` (no unit: the name alone)."""
    labels = [f"{m} [{u}]" if pd.notna(u) and str(u) else m for m, u in zip(metric, unit, strict=True)]
    return pd.Series(labels, index=metric.index, dtype="string")


def paper_vs_measured(
    records: pd.DataFrame,
    on: Sequence[str] = DEFAULT_JOIN,
    *,
    generator_map: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Join ``source="paper"`` rows with the newest matching ``source="measured"`` row.

    on: columns that must agree (the setting). generator_map: measured generator name -> the paper's
    method name (e.g. ``{"cmd-ucf101-64": "CMD"}``). Returns ``on`` + ``paper``, ``measured``,
    ``ratio`` (measured / paper), ``unit``, ``paper_where`` (the paper's table) and ``run_id``.
    Paper rows without a measurement keep an empty ``measured``.
    """
    _check_columns(records, list(on), "paper_vs_measured")
    paper = records[records["source"] == "paper"].copy()
    measured = records[records["source"] == "measured"].copy()
    if generator_map:
        measured["generator"] = measured["generator"].map(lambda g: generator_map.get(g, g)).astype("string")
    for frame in (paper, measured):
        for k in on:
            frame[k] = frame[k].astype("string").fillna("")
    measured = measured.sort_values("created_utc").drop_duplicates(subset=list(on), keep="last")
    left = paper[[*on, "value", "unit", "protocol"]].rename(
        columns={"value": "paper", "unit": "unit", "protocol": "paper_where"})
    right = measured[[*on, "value", "unit", "run_id"]].rename(columns={"value": "measured", "unit": "measured_unit"})
    out = left.merge(right, on=list(on), how="left")
    out["ratio"] = [m / p if pd.notna(m) and pd.notna(p) and p != 0 else math.nan
                    for m, p in zip(out["measured"], out["paper"], strict=True)]
    return out[[*on, "paper", "measured", "ratio", "unit", "measured_unit", "paper_where", "run_id"]]


# --- Rendering ------------------------------------------------------------------------------------------


def format_number(v: Any, digits: int = 4) -> str:
    """``digits`` significant digits; integers stay integers; NA -> '-'."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 1e15):
        return str(int(v))
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _formatted(df: pd.DataFrame, digits: int) -> pd.DataFrame:
    return df.apply(lambda col: col.map(lambda v: format_number(v, digits)).astype(str)).astype(str)


def to_markdown(df: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub markdown table (via tabulate), numbers with ``digits`` significant digits."""
    return _formatted(df, digits).to_markdown(index=False, disable_numparse=True) + "\n"


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(c, c) for c in text)


def to_latex(df: pd.DataFrame, digits: int = 4, *, caption: str | None = None, label: str | None = None) -> str:
    """A booktabs ``tabular`` (wrapped in ``table`` when a caption or label is given)."""
    cells = _formatted(df, digits)
    align = "".join("r" if pd.api.types.is_numeric_dtype(df[c]) else "l" for c in df.columns)
    lines = [rf"\begin{{tabular}}{{{align}}}", r"\toprule",
             " & ".join(latex_escape(str(c)) for c in df.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(v) for v in row) + r" \\" for row in cells.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption or label:
        inner = [r"\begin{table}[t]", r"\centering", *lines]
        if caption:
            inner.append(rf"\caption{{{latex_escape(caption)}}}")
        if label:
            inner.append(rf"\label{{{label}}}")
        lines = [*inner, r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def write_table(df: pd.DataFrame, stem: str | Path, *, digits: int = 4, caption: str | None = None,
                label: str | None = None) -> list[Path]:
    """Write ``<stem>.md`` and ``<stem>.tex``; returns both paths."""
    stem = Path(stem)
    md = write_text_atomic(stem.with_suffix(".md"), to_markdown(df, digits))
    tex = write_text_atomic(stem.with_suffix(".tex"), to_latex(df, digits, caption=caption, label=label))
    return [md, tex]
