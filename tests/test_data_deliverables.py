"""Data deliverables offline: the data tools (Polars), charts (vl-convert), the data checks,
and the `analyse_dataset` template end to end on a CSV the test writes, its report's figures
compared with values computed here independently."""

from __future__ import annotations

import csv
import random
import re
from collections import defaultdict
from pathlib import Path

import pytest
from pypdf import PdfReader

import tools.builtin  # noqa: F401  (registers the tools)
from tools.registry import ToolContext, ToolError, default_registry
from troupe.checks import run_checks
from troupe.models import AcceptanceTest, Task
from troupe.plan_templates import load_template
from troupe.plans import resolve_args, validate_plan

REGIONS = ["north", "south", "east", "west"]


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    return ToolContext(task_id="t1", tenant="test", node_id="n1", idempotency_key="k1", workspace=tmp_path / "ws")


def write_sales(ctx: ToolContext, seed: int = 7) -> list[dict]:
    rnd = random.Random(seed)
    rows = [{"region": r, "month": f"2026-{m:02d}-01", "sales": round(rnd.uniform(10, 100), 2),
             "units": rnd.randint(1, 20)} for m in range(1, 13) for r in REGIONS]
    (ctx.workspace / "attachments").mkdir(parents=True)
    with open(ctx.workspace / "attachments" / "sales.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


async def call(ctx: ToolContext, tool: str, **args):
    return await default_registry.get(tool)(ctx, args)


def check(ctx: ToolContext, check_type: str, threshold: float | None = None, **params):
    test = AcceptanceTest(id="c", check_type=check_type, threshold=threshold, params=params)
    [verdict] = run_checks([test], Task(id="t1", goal="g", tenant="test"), ctx.workspace)
    return verdict


async def test_the_dataset_template_reports_what_the_data_says(ctx):
    rows = write_sales(ctx)
    doc, plan = load_template("analyse_dataset", {"title": "Sales 2026"})
    validate_plan(plan, {name: default_registry.get(name) for name in default_registry.names()})
    outputs = {}
    for node in plan.nodes:  # listed in dependency order
        outputs[node.id] = await default_registry.get(node.tool)(ctx, resolve_args(node.args, outputs))

    # Independently: the monthly totals, and the profile of the sales column.
    by_month: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for r in rows:
        by_month[r["month"]][0] += r["sales"]
        by_month[r["month"]][1] += r["units"]
    sales = [r["sales"] for r in rows]

    profile = outputs["profile"]
    assert profile["rows"] == 48
    column = next(c for c in profile["columns"] if c["name"] == "sales")
    assert column["type"] == "float" and column["min"] == min(sales) and column["max"] == max(sales)
    assert column["mean"] == pytest.approx(sum(sales) / len(sales), abs=1e-6)

    charts = outputs["charts"]
    assert charts["dimension"] == "month" and charts["columns"] == ["sales", "units"]
    [table] = charts["tables"]
    assert [row[0][:10] for row in table["rows"]] == sorted(by_month)
    for row in table["rows"]:
        total, units = by_month[row[0][:10]]
        assert row[1] == pytest.approx(round(total, 2), abs=0.005) and row[2] == units

    reader = PdfReader(ctx.workspace / "report.pdf")
    text = re.sub(r"\s+", " ", " ".join(p.extract_text() for p in reader.pages))
    assert "Sales 2026" in text and "The data has 48 rows and 4 columns." in text
    for month, (total, units) in by_month.items():
        assert f"{month} {round(total, 2):g} {units}" in text.replace("T00:00:00", "")
    assert sum(len(p.images) > 0 for p in reader.pages) >= 1
    verdicts = run_checks([_t(t) for t in doc["acceptance_tests"]], Task(id="t1", goal="g", tenant="test"),
                          ctx.workspace)
    assert all(v.passed for v in verdicts), verdicts


def _t(raw: dict) -> AcceptanceTest:
    return AcceptanceTest.model_validate(raw)


async def test_query_filters_joins_groups_and_writes_parquet(ctx):
    rows = write_sales(ctx)
    (ctx.workspace / "managers.csv").write_text("region,manager\nnorth,Ana\nsouth,Bo\neast,Cy\n")
    out = await call(ctx, "data_query", source="attachments/sales.csv",
                     join={"path": "managers.csv", "on": ["region"], "how": "inner"},
                     filters=[{"column": "units", "op": ">=", "value": 5}],
                     group_by=["manager"], aggregate={"total": {"column": "sales", "fn": "sum"},
                                                      "n": {"column": "sales", "fn": "count"}},
                     sort=[{"column": "total", "descending": True}], limit=2, out="out/top.parquet")
    managers = {"north": "Ana", "south": "Bo", "east": "Cy"}
    want: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for r in rows:
        if r["region"] in managers and r["units"] >= 5:
            want[managers[r["region"]]][0] += r["sales"]
            want[managers[r["region"]]][1] += 1
    top = sorted(want.items(), key=lambda kv: -kv[1][0])[:2]
    assert out["rows"] == 2 and out["columns"] == {"manager": "string", "total": "float", "n": "integer"}
    assert [r[0] for r in out["preview"]["rows"]] == [m for m, _ in top]
    for (manager, (total, n)), got in zip(top, out["preview"]["rows"]):
        assert got[1] == pytest.approx(total) and got[2] == n

    assert check(ctx, "row_count", threshold=2, artifact="out/top.parquet").passed
    assert not check(ctx, "row_count", threshold=3, artifact="out/top.parquet").passed
    assert check(ctx, "row_count", artifact="out/top.parquet", min=1, max=2).passed
    assert check(ctx, "schema", artifact="out/top.parquet",
                 columns={"manager": "string", "total": "number", "n": "integer"}, exact=True).passed
    wrong = check(ctx, "schema", artifact="out/top.parquet", columns={"total": "string", "missing": "any"})
    assert not wrong.passed and "'total' is float, want string" in wrong.reason and "no column 'missing'" in wrong.reason
    assert "was not produced" in check(ctx, "row_count", artifact="nope.csv").reason


async def test_charts_are_readable_and_fetch_nothing(ctx):
    write_sales(ctx)
    spec = {"mark": "bar", "encoding": {"x": {"field": "region", "type": "nominal"},
                                        "y": {"field": "sales", "type": "quantitative", "aggregate": "sum"}}}
    out = await call(ctx, "chart", data="sales.csv", spec=spec, name="charts/by_region",
                     formats=["png", "svg", "html"])
    assert out["artifacts"] == ["charts/by_region.png", "charts/by_region.svg", "charts/by_region.html"]
    assert check(ctx, "chart_exists", artifact="charts/by_region.png").passed
    assert check(ctx, "chart_exists", artifact="charts").passed
    assert "<script" in (ctx.workspace / "charts/by_region.html").read_text()  # standalone: scripts inlined
    (ctx.workspace / "charts" / "broken.png").write_bytes(b"not a png")
    broken = check(ctx, "chart_exists", artifact="charts")
    assert not broken.passed and "broken.png is not a readable image" in broken.reason

    with pytest.raises(ToolError, match=r"spec.data.url|spec.layer.0.data.url"):
        await call(ctx, "chart", data="sales.csv",
                   spec={"layer": [{"data": {"url": "http://127.0.0.1:9/x.csv"}, "mark": "point"}]})


@pytest.mark.parametrize("args, message", [
    ({"source": "missing.csv"}, "no table 'missing.csv'"),
    ({"source": "attachments", "filters": [{"column": "colour", "op": "==", "value": 1}]},
     "filters: no column 'colour'; the columns are region, month, sales, units"),
    ({"source": "sales.csv", "out": "result.xlsx"}, "must end with .csv or .parquet"),
    ({"source": "../sales.csv"}, "outside|relative"),
    ({"source": "sales.csv", "filters": [{"column": "region", "op": ">", "value": 3}]}, "the query failed"),
])
async def test_bad_queries_say_what_to_fix(ctx, args, message):
    write_sales(ctx)
    with pytest.raises(ToolError, match=message):
        await call(ctx, "data_query", **args)
