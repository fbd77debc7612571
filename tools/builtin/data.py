"""The `data_describe` and `data_query` tools: tables from the workspace (CSV, TSV, Parquet,
XLSX, JSON lines) through Polars, written back as CSV or Parquet.

A query is structured (filters, a join, group-by with aggregations, select, sort, limit)
rather than SQL: Polars' SQL would let a query read any file by its table functions, and a
structured query is what a model fills in reliably from the JSON schema.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from tools.builtin.files import write_atomically
from tools.registry import ToolContext, ToolError, tool
from tools.workspace import resolve_inside

__all__ = ["data_describe", "data_query", "read_table", "table_file", "write_table", "kind_of"]

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".xlsx", ".xls", ".jsonl", ".ndjson")
PREVIEW_ROWS = 10


def table_file(root: Path, path: str) -> Path:
    """The table at `path`, or the one table file in the folder `path` (e.g. 'attachments');
    a bare name is also looked up among the task's attachments."""
    target = resolve_inside(root, path)
    if not target.exists() and "/" not in path:
        target = resolve_inside(root, f"attachments/{path}")
    if target.is_dir():
        found = sorted(p for p in target.rglob("*") if p.suffix.lower() in TABLE_SUFFIXES and p.is_file())
        if len(found) != 1:
            names = ", ".join(p.relative_to(root).as_posix() for p in found[:10]) or "none"
            raise ToolError(f"folder {path!r} holds {len(found)} table files ({names}); name one of them")
        target = found[0]
    if not target.is_file():
        raise ToolError(f"no table {path!r} in the workspace; pass a CSV, TSV, Parquet, XLSX or JSON-lines file")
    if target.suffix.lower() not in TABLE_SUFFIXES:
        raise ToolError(f"{path!r} is not a table file; use one of {', '.join(TABLE_SUFFIXES)}")
    return target


def read_table(root: Path, path: str) -> Any:
    import polars as pl

    target = table_file(root, path)
    suffix = target.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            return pl.read_csv(target, separator="\t" if suffix == ".tsv" else ",", infer_schema_length=10_000,
                               try_parse_dates=True)
        if suffix == ".parquet":
            return pl.read_parquet(target)
        if suffix in (".xlsx", ".xls"):
            return pl.read_excel(target)
        return pl.read_ndjson(target)
    except Exception as exc:  # polars raises many kinds; each means "this file is not a readable table"
        raise ToolError(f"{target.relative_to(root).as_posix()!r} could not be read as a table: "
                        f"{str(exc).splitlines()[0][:300]}") from None


def write_table(root: Path, frame: Any, out: str) -> dict[str, Any]:
    target = resolve_inside(root, out)
    suffix = target.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ToolError(f"out {out!r} must end with .csv or .parquet")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    frame.write_csv(tmp) if suffix == ".csv" else frame.write_parquet(tmp)
    data = tmp.read_bytes()
    tmp.unlink()
    write_atomically(target, data)
    return {"artifact": target.relative_to(root).as_posix(), "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def kind_of(dtype: Any) -> str:
    """A column's type family, as the `schema` check names them."""
    if dtype.is_integer():
        return "integer"
    if dtype.is_float() or dtype.is_decimal():
        return "float"
    if dtype.is_temporal():
        return "date"
    name = str(dtype)
    if name == "Boolean":
        return "boolean"
    if name in ("String", "Utf8", "Categorical", "Enum"):
        return "string"
    return name.lower()


def _value(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 6)
    if isinstance(v, (int, str, bool)) or v is None:
        return v
    return str(v)


def _rows(frame: Any, n: int) -> list[list[Any]]:
    return [[_value(v) for v in row] for row in frame.head(n).iter_rows()]


def describe(frame: Any) -> dict[str, Any]:
    columns = []
    for name, dtype in frame.schema.items():
        s = frame[name]
        col: dict[str, Any] = {"name": name, "type": kind_of(dtype), "nulls": s.null_count(),
                               "distinct": s.n_unique()}
        if dtype.is_numeric():
            col |= {"min": _value(s.min()), "max": _value(s.max()), "mean": _value(s.mean()), "sum": _value(s.sum())}
        elif dtype.is_temporal():
            col |= {"min": _value(s.min()), "max": _value(s.max())}
        columns.append(col)
    head = ["column", "type", "nulls", "distinct", "min", "max", "mean"]
    table = {"caption": f"Columns of the data ({frame.height} rows)", "columns": head,
             "rows": [[c["name"], *("" if c.get(h) is None else c[h] for h in head[1:])] for c in columns]}
    lines = [f"The data has {frame.height} rows and {frame.width} columns.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table["rows"]]
    return {"rows": frame.height, "columns": columns, "table": table, "markdown": "\n".join(lines),
            "head": {"columns": frame.columns, "rows": _rows(frame, PREVIEW_ROWS)}}


@tool
async def data_describe(ctx: ToolContext, path: str) -> dict[str, Any]:
    """Profile a table: rows, and per column its type, nulls, distinct values, min, max, mean and sum.

    Args:
        path: A CSV, TSV, Parquet, XLSX or JSON-lines file in the workspace, or a folder
            (e.g. 'attachments') holding exactly one.
    """
    root = ctx.workspace.resolve()
    return await asyncio.to_thread(lambda: describe(read_table(root, path)))


Op = Literal["==", "!=", "<", "<=", ">", ">=", "in", "not_in", "contains", "is_null", "not_null"]
Fn = Literal["sum", "mean", "min", "max", "count", "n_unique", "median", "first", "last"]


class Filter(BaseModel):
    column: str
    op: Op
    value: Any = None


class Aggregate(BaseModel):
    column: str
    fn: Fn


class Join(BaseModel):
    path: str = Field(description="The other table, in the workspace.")
    on: list[str] = Field(min_length=1)
    how: Literal["inner", "left", "full", "semi", "anti"] = "inner"


class Sort(BaseModel):
    column: str
    descending: bool = False


def _check_columns(frame: Any, names: list[str], where: str) -> None:
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise ToolError(f"{where}: no column {', '.join(map(repr, missing))}; the columns are "
                        f"{', '.join(frame.columns)}")


def _predicate(f: Filter) -> Any:
    import polars as pl

    c = pl.col(f.column)
    ops = {"==": lambda: c == f.value, "!=": lambda: c != f.value, "<": lambda: c < f.value,
           "<=": lambda: c <= f.value, ">": lambda: c > f.value, ">=": lambda: c >= f.value,
           "in": lambda: c.is_in(list(f.value or [])), "not_in": lambda: ~c.is_in(list(f.value or [])),
           "contains": lambda: c.cast(pl.String).str.contains(str(f.value), literal=True),
           "is_null": lambda: c.is_null(), "not_null": lambda: c.is_not_null()}
    return ops[f.op]()


def query(root: Path, source: str, filters: list[Filter], join: Join | None, group_by: list[str],
          aggregate: dict[str, Aggregate], select: list[str], sort: list[Sort], limit: int | None) -> Any:
    import polars as pl

    frame = read_table(root, source)
    if join is not None:
        other = read_table(root, join.path)
        _check_columns(frame, join.on, "join")
        _check_columns(other, join.on, f"join with {join.path!r}")
        frame = frame.join(other, on=join.on, how=join.how)
    _check_columns(frame, [f.column for f in filters], "filters")
    try:
        for f in filters:
            frame = frame.filter(_predicate(f))
        if group_by or aggregate:
            _check_columns(frame, group_by + [a.column for a in aggregate.values()], "group_by/aggregate")
            aggs = [getattr(pl.col(a.column), "len" if a.fn == "count" else a.fn)().alias(name)
                    for name, a in aggregate.items()]
            frame = frame.group_by(group_by, maintain_order=True).agg(aggs) if group_by else frame.select(aggs)
        if select:
            _check_columns(frame, select, "select")
            frame = frame.select(select)
        if sort:
            _check_columns(frame, [s.column for s in sort], "sort")
            frame = frame.sort([s.column for s in sort], descending=[s.descending for s in sort])
    except pl.exceptions.PolarsError as exc:
        raise ToolError(f"the query failed: {str(exc).splitlines()[0][:300]}; check the columns' types "
                        "against data_describe") from None
    return frame.head(limit) if limit is not None else frame


@tool
async def data_query(
    ctx: ToolContext,
    source: str,
    out: str = "result.csv",
    filters: list[Filter] | None = None,
    join: Join | None = None,
    group_by: list[str] | None = None,
    aggregate: dict[str, Aggregate] | None = None,
    select: list[str] | None = None,
    sort: list[Sort] | None = None,
    limit: Annotated[int | None, Field(ge=0)] = None,
) -> dict[str, Any]:
    """Filter, join, group and aggregate a table, and write the result as CSV or Parquet.

    Args:
        source: A table file in the workspace (CSV, TSV, Parquet, XLSX, JSON lines) or a folder with one.
        out: Where to write the result: a .csv or .parquet path in the workspace.
        filters: Row conditions, all of which must hold: [{column, op, value}].
        join: Another table joined on shared columns: {path, on, how}.
        group_by: Columns to group by; with `aggregate`, one row per group.
        aggregate: Output column -> {column, fn}, fn one of sum, mean, min, max, count, n_unique, median.
        select: Columns to keep, in order.
        sort: [{column, descending}].
        limit: Keep at most this many rows.
    """
    root = ctx.workspace.resolve()

    def run() -> dict[str, Any]:
        frame = query(root, source, filters or [], join, group_by or [], aggregate or {}, select or [],
                      sort or [], limit)
        written = write_table(root, frame, out)
        return written | {"rows": frame.height, "columns": {n: kind_of(t) for n, t in frame.schema.items()},
                          "preview": {"columns": frame.columns, "rows": _rows(frame, PREVIEW_ROWS)}}

    return await asyncio.to_thread(run)
