"""Generate the Grafana dashboards' JSON from dashboards/panels.py with grafana-foundation-sdk.

    python -m dashboards.build          # rewrite dashboards/json/*.json
    python -m dashboards.build --check  # exit 1 if the committed JSON is out of date
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

from dashboards.panels import BOARDS, Board, Panel

__all__ = ["JSON_DIR", "render", "render_all", "main"]

JSON_DIR = Path(__file__).resolve().parent / "json"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
"""Every panel reads the dashboard's `datasource` variable, so one import fits any Prometheus."""


def _panel(p: Panel) -> timeseries.Panel | stat.Panel:
    builder = (stat.Panel() if p.kind == "stat" else timeseries.Panel().fill_opacity(10).min(0))
    builder = builder.title(p.title).description(p.description).unit(p.unit).datasource(DATASOURCE)
    builder = builder.height(8).span(p.width)
    for i, q in enumerate(p.queries):
        target = prometheus.Dataquery().expr(q.expr).ref_id(chr(ord("A") + i)).datasource(DATASOURCE)
        if q.legend:
            target = target.legend_format(q.legend)
        builder = builder.with_target(target)
    return builder


def render(board: Board) -> str:
    """One dashboard as stable, pretty JSON (what is committed)."""
    builder = (gd.Dashboard(board.title).uid(board.uid).description(board.description)
               .tags(["troupe"]).refresh("30s").time("now-6h", "now").timezone("browser")
               .with_variable(gd.DatasourceVariable("datasource").label("Prometheus").type("prometheus")))
    for p in board.panels:
        builder = builder.with_panel(_panel(p))
    return json.dumps(builder.build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def render_all() -> dict[str, str]:
    return {f"{b.uid}.json": render(b) for b in BOARDS}


def main(argv: list[str]) -> int:
    rendered = render_all()
    if "--check" in argv:
        stale = [n for n, text in rendered.items()
                 if not (JSON_DIR / n).is_file() or (JSON_DIR / n).read_text() != text]
        if stale:
            print(f"out of date: {', '.join(stale)}; run `python -m dashboards.build`", file=sys.stderr)
            return 1
        return 0
    JSON_DIR.mkdir(exist_ok=True)
    for name, text in rendered.items():
        (JSON_DIR / name).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
