"""The `chart` and `chart_columns` tools: charts as PNG, SVG and standalone HTML from a
Vega-Lite spec, rendered by vl-convert (Vega in an embedded engine: no browser, no
download). The data comes from a table in the workspace; a spec may not load data from a
URL, and vl-convert is given no base URL it may fetch from.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path
from typing import Any, Literal

from tools.builtin.data import kind_of, read_table, write_table
from tools.builtin.files import write_atomically
from tools.registry import ToolContext, ToolError, tool
from tools.workspace import check_base_name, resolve_inside

__all__ = ["chart", "chart_columns"]

MAX_POINTS = 5000
MAX_DIMENSION_VALUES = 50
Format = Literal["png", "svg", "html"]


def _no_urls(spec: Any, where: str = "spec") -> None:
    """Refuse data (or images) loaded from anywhere: a chart shows the table it was given."""
    if isinstance(spec, dict):
        for key, value in spec.items():
            if key == "url":
                raise ToolError(f"{where}.url: a chart's data comes from `data` (a table in the workspace), "
                                "not from a URL")
            _no_urls(value, f"{where}.{key}")
    elif isinstance(spec, list):
        for i, value in enumerate(spec):
            _no_urls(value, f"{where}.{i}")


def _json_rows(frame: Any) -> list[dict[str, Any]]:
    return [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}
            for row in frame.head(MAX_POINTS).iter_rows(named=True)]


def render(root: Path, spec: dict[str, Any], rows: list[dict[str, Any]], name: str,
           formats: list[str]) -> dict[str, Any]:
    import vl_convert as vlc

    _no_urls(spec)
    full = {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", **spec, "data": {"values": rows}}
    written: dict[str, str] = {}
    for fmt in formats:
        try:
            if fmt == "png":
                data = vlc.vegalite_to_png(full, scale=2, allowed_base_urls=[])
            elif fmt == "svg":
                data = vlc.vegalite_to_svg(full, allowed_base_urls=[]).encode()
            else:
                data = vlc.vegalite_to_html(full, bundle=True).encode()  # scripts inlined: works offline
        except ValueError as exc:
            raise ToolError(f"the chart spec is not valid Vega-Lite: {str(exc).splitlines()[0][:300]}") from None
        target = resolve_inside(root, f"{name}.{fmt}")
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(target, data)
        written[target.relative_to(root).as_posix()] = hashlib.sha256(data).hexdigest()
    return {"artifacts": list(written), "sha256": written, "points": len(rows)}


def _check_name(name: str) -> None:
    check_base_name(name, (".png", ".svg", ".html"), "charts/sales")


@tool
async def chart(ctx: ToolContext, data: str, spec: dict[str, Any], name: str = "chart",
                formats: list[Format] | None = None) -> dict[str, Any]:
    """Draw a chart of a table with a Vega-Lite spec, as PNG, SVG and standalone HTML.

    Args:
        data: A table file in the workspace (CSV, TSV, Parquet, XLSX, JSON lines); its rows
            (up to 5,000) become the spec's data.
        spec: A Vega-Lite spec without `data`, e.g. {"mark": "bar", "encoding": {"x": {"field":
            "region", "type": "nominal"}, "y": {"field": "sales", "type": "quantitative"}}}.
        name: File name without extension: writes NAME.png, NAME.svg, NAME.html.
        formats: Which of png, svg, html to write; png and svg by default.
    """
    _check_name(name)
    root = ctx.workspace.resolve()

    def run() -> dict[str, Any]:
        frame = read_table(root, data)
        return render(root, spec, _json_rows(frame), name, formats or ["png", "svg"])

    return await asyncio.to_thread(run)


def dimension_of(frame: Any) -> tuple[str | None, str]:
    """The obvious dimension to chart against: the first date column, else the first text
    column with between 2 and 50 distinct values; None (the row number) if neither."""
    for name, dtype in frame.schema.items():
        if dtype.is_temporal():
            return name, "temporal"
    for name, dtype in frame.schema.items():
        if kind_of(dtype) == "string" and 2 <= frame[name].n_unique() <= MAX_DIMENSION_VALUES:
            return name, "nominal"
    return None, "row"


def _number(v: Any) -> Any:
    return round(v, 2) if isinstance(v, float) else v


@tool
async def chart_columns(ctx: ToolContext, data: str, aggregate: Literal["sum", "mean"] = "sum",
                        folder: str = "charts", table_out: str | None = None) -> dict[str, Any]:
    """Chart every numeric column of a table against its obvious dimension (the first date
    column, else the first text column with 2 to 50 values), aggregated per value of it;
    one PNG and SVG per column, and the aggregated values as a table for a report.

    Args:
        data: A table file in the workspace, or a folder (e.g. 'attachments') holding one.
        aggregate: How rows sharing a dimension value are combined: sum or mean.
        folder: Where in the workspace the charts go.
        table_out: Also write the aggregated values to this .csv or .parquet file.
    """
    _check_name(folder)
    root = ctx.workspace.resolve()

    def run() -> dict[str, Any]:
        import polars as pl

        frame = read_table(root, data)
        dimension, kind = dimension_of(frame)
        numeric = [n for n, t in frame.schema.items() if t.is_numeric() and n != dimension]
        if not numeric:
            raise ToolError(f"{data!r} has no numeric column to chart; its columns are {', '.join(frame.columns)}")
        if dimension is None:
            dimension, frame = "row", frame.with_row_index("row", offset=1)
            grouped = frame.select(["row", *numeric])
        else:
            agg = [getattr(pl.col(n), aggregate)().alias(n) for n in numeric]
            grouped = frame.group_by(dimension).agg(agg).sort(dimension)
        rows = _json_rows(grouped)
        figures, artifacts = [], []
        for column in numeric:
            mark = "line" if kind in ("temporal", "row") else "bar"
            spec = {"title": f"{column} by {dimension}" + (f" ({aggregate})" if kind != "row" else ""),
                    "mark": {"type": mark, "point": mark == "line"}, "width": 480, "height": 260,
                    "encoding": {"x": {"field": dimension, "type": "quantitative" if kind == "row" else kind,
                                       "sort": None},
                                 "y": {"field": column, "type": "quantitative"}}}
            safe = re.sub(r"[^\w-]+", "_", column).strip("_") or "column"
            out = render(root, spec, rows, f"{folder}/{safe}", ["png", "svg"])
            artifacts += out["artifacts"]
            figures.append({"caption": spec["title"], "image": f"{folder}/{safe}.png"})
        table = {"caption": f"{', '.join(numeric)} by {dimension}" + (f" ({aggregate})" if kind != "row" else ""),
                 "columns": [dimension, *numeric],
                 "rows": [[str(r[dimension]), *(_number(r[n]) for n in numeric)] for r in rows]}
        if table_out is not None:
            artifacts.append(write_table(root, grouped, table_out)["artifact"])
        return {"dimension": dimension, "aggregate": aggregate, "columns": numeric, "figures": figures,
                "tables": [table], "artifacts": artifacts}

    return await asyncio.to_thread(run)
