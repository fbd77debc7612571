"""A whole dashboard as a PNG, drawn from a live Prometheus the way Grafana lays it out: the
board's panels on Grafana's 24-column grid, time series as lines, stats as a big number over a
sparkline, Grafana's dark theme. For the README, and for machines without Grafana (there is
no Grafana package for Debian here). Vega-Lite does the drawing (vl-convert, no browser).

    python -m dashboards.screenshot http://127.0.0.1:9090 "Troupe / Overview" docs/dashboard-overview.png \\
        --minutes 20 [--end UNIX_TIME]

bench/dashboard_demo.py runs Troupe under a workload, scrapes it, and calls this.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from dashboards.panels import BOARDS, Board, Panel
from dashboards.render import series

__all__ = ["board_spec", "render_png"]

GRID_COLS = 24  # Grafana's grid
COL_PX = 62
ROW_PX = 190
BG, PANEL_BG, BORDER, TEXT, MUTED, GRID = "#111217", "#181b1f", "#2c2f36", "#d8d9da", "#8e9196", "#26292f"
# Grafana's classic palette; outcomes keep the colours an operator expects.
PALETTE = ("#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff", "#fade2a")
FIXED = {"done": "#73bf69", "ok": "#73bf69", "failed": "#f2495c", "error": "#f2495c", "cancelled": "#8e9196",
         "SLO": "#f2495c", "queued": "#ff9830", "running": "#5794f2", "waiting": "#b877d9", "p50": "#5794f2",
         "p95": "#ff9830"}

# Axis and number formats by Grafana unit (Vega expressions over `datum.value`).
_LABEL = {
    "s": "datum.value < 1 && datum.value > 0 ? format(datum.value * 1000, '.3~r') + ' ms' "
         ": format(datum.value, '.3~r') + ' s'",
    "percentunit": "format(datum.value, '.0%')",
    "currencyUSD": "'$' + format(datum.value, '.3~r')",
    "short": "format(datum.value, '.3~r')",
}
_NUMBER = {"s": ".3~r", "percentunit": ".1%", "currencyUSD": "$.2f", "short": ".3~r"}
_SUFFIX = {"s": " s"}


# Every panel its own colours, dashes and legend, as in Grafana.
_OWN = {"scale": {"color": "independent", "strokeDash": "independent"},
        "legend": {"color": "independent", "strokeDash": "independent"}}


def _colours(names: list[str]) -> list[str]:
    free = iter(c for c in PALETTE if c not in {FIXED[n] for n in names if n in FIXED})
    return [FIXED.get(n) or next(free, PALETTE[0]) for n in names]


def _rows(prometheus: str, panel: Panel, start: float, end: float, step_s: float) -> list[dict[str, Any]]:
    rows = []
    for q in panel.queries:
        for name, points in series(prometheus, q.expr, q.legend or panel.title, start, end, step_s):
            rows += [{"t": t * 1000, "v": v, "series": name} for t, v in points]
    return rows


def _title(panel: Panel) -> dict[str, Any]:
    return {"text": panel.title, "anchor": "start", "color": TEXT, "fontSize": 13, "fontWeight": 500, "offset": 8}


def _no_data(panel: Panel, width: int) -> dict[str, Any]:
    """What Grafana shows for a panel whose queries have no number in the window (absent, or a
    ratio of rates that is 0/0): the panel, empty, saying so."""
    height = ROW_PX - 70
    return {"title": _title(panel), "width": width, "height": height, "data": {"values": [{"label": "No data"}]},
            "mark": {"type": "text", "fontSize": 16, "color": MUTED, "x": width / 2, "y": height / 2},
            "encoding": {"text": {"field": "label", "type": "nominal"}}}


def _timeseries(panel: Panel, rows: list[dict[str, Any]], width: int, start: float, end: float) -> dict[str, Any]:
    if not rows:  # an empty scale domain would break the whole picture
        return _no_data(panel, width)
    names = sorted({r["series"] for r in rows})
    label = _LABEL.get(panel.unit, _LABEL["short"])
    return {
        "title": _title(panel), "width": width, "height": ROW_PX - 70, "data": {"values": rows},
        "mark": {"type": "line", "strokeWidth": 1.8, "interpolate": "monotone", "clip": True},
        "encoding": {
            "x": {"field": "t", "type": "temporal", "scale": {"domain": [start * 1000, end * 1000]},
                  "axis": {"title": None, "format": "%H:%M", "tickCount": 6}},
            "y": {"field": "v", "type": "quantitative", "scale": {"zero": True, "nice": True},
                  "axis": {"title": None, "labelExpr": label, "tickCount": 4}},
            "color": {"field": "series", "type": "nominal", "scale": {"domain": names, "range": _colours(names)},
                      "legend": {"orient": "bottom", "title": None, "direction": "horizontal", "symbolType": "stroke",
                                 "columns": 6}},
            "strokeDash": {"field": "series", "type": "nominal", "legend": None, "scale": {
                "domain": names, "range": [[6, 4] if n == "SLO" else [1, 0] for n in names]}},
        },
    }


def _stat(panel: Panel, rows: list[dict[str, Any]], width: int, start: float, end: float) -> dict[str, Any]:
    last = max(rows, key=lambda r: r["t"]) if rows else None
    value = "No data" if last is None else None
    colour = MUTED if last is None else "#73bf69"
    if last is not None and panel.unit == "percentunit" and last["v"] < 0.8:  # the TaskFailureRate threshold
        colour = "#f2495c"
    height = ROW_PX - 70
    spark = {"mark": {"type": "area", "color": colour, "opacity": 0.18, "line": {"color": colour, "strokeWidth": 1.2},
                      "interpolate": "monotone"},
             "encoding": {"x": {"field": "t", "type": "temporal", "axis": None,
                                "scale": {"domain": [start * 1000, end * 1000]}},
                          "y": {"field": "v", "type": "quantitative", "axis": None,
                                "scale": {"zero": True, "domain": [0, 1] if panel.unit == "percentunit" else None}}}}
    text = {"data": {"values": [{"label": value or ""}]} if value else {"values": [last]},
            "transform": [] if value else [{"calculate": f"format(datum.v, '{_NUMBER.get(panel.unit, '.3~r')}')"
                                                          f" + '{_SUFFIX.get(panel.unit, '')}'", "as": "label"}],
            "mark": {"type": "text", "fontSize": 44, "fontWeight": 500, "color": colour, "x": width / 2,
                     "y": height / 2 - 4},
            "encoding": {"text": {"field": "label", "type": "nominal"}}}
    spark_spec = {**spark, "data": {"values": rows}} if rows else None
    return {"title": _title(panel), "width": width, "height": height,
            "layer": [layer for layer in (spark_spec, text) if layer]}


def _grid(panels: list[tuple[Panel, dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    """Panels into rows of Grafana's 24 columns, in order (Grafana's auto layout)."""
    rows: list[list[dict[str, Any]]] = [[]]
    used = 0
    for panel, spec in panels:
        if used + panel.width > GRID_COLS:
            rows.append([])
            used = 0
        rows[-1].append(spec)
        used += panel.width
    return rows


def board_spec(prometheus: str, board: Board, *, minutes: float = 20, end: float | None = None,
               step_s: float | None = None) -> dict[str, Any]:
    """The Vega-Lite spec of `board` over the `minutes` before `end` (default now)."""
    end = end or time.time()
    start = end - minutes * 60
    step_s = step_s or max(5.0, minutes * 60 / 240)  # ~240 points a line, as Grafana asks for
    specs = []
    for panel in board.panels:
        rows = _rows(prometheus, panel, start, end, step_s)
        width = panel.width * COL_PX - 40
        draw = _stat if panel.kind == "stat" else _timeseries
        specs.append((panel, draw(panel, rows, width, start, end)))
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(end))
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": {"text": board.title, "subtitle": f"{board.description}   ·   last {minutes:.0f} minutes to {stamp}",
                  "anchor": "start", "color": TEXT, "subtitleColor": MUTED, "fontSize": 18, "subtitleFontSize": 12,
                  "offset": 14},
        "background": BG, "padding": 18,
        "vconcat": [{"hconcat": row, "spacing": 16, "resolve": _OWN} for row in _grid(specs)], "spacing": 22,
        "resolve": _OWN,
        "config": {
            "font": "DejaVu Sans, sans-serif",
            "view": {"fill": PANEL_BG, "stroke": BORDER, "cornerRadius": 2},
            "axis": {"labelColor": MUTED, "domainColor": BORDER, "tickColor": BORDER, "gridColor": GRID,
                     "labelFontSize": 10, "domain": False},
            "axisX": {"grid": False},
            "legend": {"labelColor": TEXT, "labelFontSize": 11, "symbolStrokeWidth": 2.5, "padding": 2},
            "concat": {"spacing": 16},
        },
    }


def render_png(prometheus: str, board: Board, *, minutes: float = 20, end: float | None = None,
               scale: float = 1.5) -> bytes:
    import vl_convert

    return vl_convert.vegalite_to_png(board_spec(prometheus.rstrip("/"), board, minutes=minutes, end=end),
                                      scale=scale)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prometheus", help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("board", help="dashboard title, e.g. 'Troupe / Overview'")
    parser.add_argument("out", help="PNG file to write")
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--end", type=float, default=None, help="Unix time the chart ends at (default now)")
    parser.add_argument("--scale", type=float, default=1.5)
    args = parser.parse_args(argv)
    board = next((b for b in BOARDS if b.title == args.board), None)
    if board is None:
        parser.error(f"no dashboard {args.board!r}; there are: {', '.join(b.title for b in BOARDS)}")
    with open(args.out, "wb") as f:
        f.write(render_png(args.prometheus, board, minutes=args.minutes, end=args.end, scale=args.scale))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
