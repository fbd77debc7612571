"""Render one dashboard panel to SVG from a live Prometheus: what Grafana would draw, for the
README and for machines without Grafana (there is no Grafana package for Debian here).

    python -m dashboards.render http://127.0.0.1:9090 "Troupe / Overview" "Tasks finished per minute" out.svg
"""

from __future__ import annotations

import sys
import time
from html import escape

import httpx

from dashboards.panels import BOARDS, Panel

__all__ = ["render_svg", "series"]

W, H, PAD = 640, 300, 48
COLOURS = ("#3274d9", "#e02f44", "#56a64b", "#ff9830", "#a352cc", "#8ab8ff", "#fade2a")


def series(prometheus: str, expr: str, legend: str, start: float, end: float, step: float) -> list[tuple[str, list]]:
    """A query's series over [start, end] from Prometheus's range API, named by the Grafana-style
    `legend` ({{label}} filled in): [(name, [(unix_time, value), ...])], NaN and infinities dropped."""
    r = httpx.get(f"{prometheus}/api/v1/query_range", params={"query": expr, "start": start, "end": end,
                                                              "step": step}, timeout=30)
    r.raise_for_status()
    out = []
    for s in r.json()["data"]["result"]:
        name = legend
        for k, v in s["metric"].items():
            name = name.replace("{{" + k + "}}", v)
        points = [(float(t), float(v)) for t, v in s["values"] if v not in ("NaN", "+Inf", "-Inf")]
        if points:
            out.append((name or expr, points))
    return out


def render_svg(prometheus: str, panel: Panel, *, minutes: float = 10, step_s: float = 5) -> str:
    """The panel's queries over the last `minutes`, as lines on one chart with a legend."""
    end = time.time()
    start = end - minutes * 60
    lines = [s for q in panel.queries for s in series(prometheus, q.expr, q.legend, start, end, step_s)]
    top = max([v for _, pts in lines for _, v in pts] + [1e-9]) * 1.1
    x = lambda t: PAD + (t - start) / (end - start) * (W - 2 * PAD)  # noqa: E731
    y = lambda v: H - PAD - v / top * (H - 2 * PAD)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H + 20 * len(lines)}" '
             'font-family="sans-serif" font-size="12">',
             f'<rect width="100%" height="100%" fill="#181b1f"/>',
             f'<text x="{PAD}" y="24" fill="#d8d9da" font-size="14">{escape(panel.title)}</text>',
             f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#444"/>',
             f'<text x="8" y="{PAD + 4}" fill="#8e8e8e">{top / 1.1:.3g}</text>',
             f'<text x="8" y="{H - PAD}" fill="#8e8e8e">0</text>',
             f'<text x="{W - PAD - 60}" y="{H - PAD + 16}" fill="#8e8e8e">last {minutes:g} min</text>']
    for i, (name, pts) in enumerate(lines):
        colour = COLOURS[i % len(COLOURS)]
        path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in pts)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        parts.append(f'<text x="{PAD}" y="{H + 14 + 20 * i}" fill="{colour}">{escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main(argv: list[str]) -> int:
    prometheus, board_title, panel_title, out = argv
    board = next(b for b in BOARDS if b.title == board_title)
    panel = next(p for p in board.panels if p.title == panel_title)
    with open(out, "w") as f:
        f.write(render_svg(prometheus.rstrip("/"), panel))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
