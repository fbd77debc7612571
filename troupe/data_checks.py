"""Acceptance checks on data deliverables, read from the file itself (not its text):

    {"id": "rows", "check_type": "row_count", "threshold": 12, "params": {"artifact": "out/by_month.parquet"}}
    {"id": "rows", "check_type": "row_count", "params": {"artifact": "t.csv", "min": 1, "max": 100}}
    {"id": "cols", "check_type": "schema", "params": {"artifact": "t.parquet",
                                                      "columns": {"region": "string", "total": "float"}}}
    {"id": "fig", "check_type": "chart_exists", "params": {"artifact": "charts/sales.png"}}
    {"id": "figs", "check_type": "chart_exists", "params": {"artifact": "charts"}}

`row_count`: `threshold` is the exact count wanted; or `min` and/or `max`. `schema`: each
named column exists with that type family (string, integer, float, number, date, boolean;
`any` for presence only); a list of names checks presence; `exact: true` also refuses other
columns. `chart_exists`: a PNG or JPEG that decodes, or an SVG document, with some size; for a
folder, at least one chart and every PNG, JPEG and SVG in it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from troupe.models import AcceptanceTest

__all__ = ["DATA_CHECKS", "run_data_check"]

DATA_CHECKS = frozenset({"row_count", "schema", "chart_exists"})


class DataCheckError(LookupError):
    pass


def _artifact(test: AcceptanceTest, workspace: Path, folder_ok: bool = False) -> tuple[Path, str]:
    name = test.params.get("artifact")
    if not name:
        raise DataCheckError(f"{test.check_type} needs params.artifact: a file in the task's workspace")
    root = workspace.resolve()
    path = (root / str(name)).resolve()
    if not path.is_relative_to(root) or not (path.is_file() or (folder_ok and path.is_dir())):
        raise DataCheckError(f"artifact {name!r} was not produced")
    return path, str(name)


def _frame(workspace: Path, name: str) -> Any:
    from tools.builtin.data import read_table  # polars, loaded only by tasks that check data
    from tools.registry import ToolError

    try:
        return read_table(workspace.resolve(), name)
    except ToolError as exc:
        raise DataCheckError(str(exc)) from None


def _row_count(test: AcceptanceTest, workspace: Path) -> tuple[bool, str]:
    _, name = _artifact(test, workspace)
    rows = _frame(workspace, name).height
    p = test.params
    if test.threshold is not None:
        return rows == int(test.threshold), f"{rows} rows, want {int(test.threshold)}"
    low, high = p.get("min", 1), p.get("max")
    ok = rows >= int(low) and (high is None or rows <= int(high))
    want = f"at least {low}" + (f" and at most {high}" if high is not None else "")
    return ok, f"{rows} rows, want {want}"


def _schema(test: AcceptanceTest, workspace: Path) -> tuple[bool, str]:
    from tools.builtin.data import kind_of

    _, name = _artifact(test, workspace)
    frame = _frame(workspace, name)
    wanted = test.params.get("columns")
    if not wanted:
        raise DataCheckError("schema needs params.columns: {name: type} or a list of names")
    wanted = dict.fromkeys(wanted, "any") if isinstance(wanted, list) else dict(wanted)
    have = {n: kind_of(t) for n, t in frame.schema.items()}
    problems = []
    for column, kind in wanted.items():
        if column not in have:
            problems.append(f"no column {column!r}")
        elif kind not in ("any", have[column]) and not (kind == "number" and have[column] in ("integer", "float")):
            problems.append(f"{column!r} is {have[column]}, want {kind}")
    if test.params.get("exact"):
        problems += [f"unexpected column {c!r}" for c in have if c not in wanted]
    return (not problems, "columns as expected" if not problems else "; ".join(problems))


CHART_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg")


def _one_chart(path: Path, name: str) -> tuple[bool, str]:
    if path.suffix.lower() == ".svg":
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as exc:
            return False, f"{name} is not an SVG document: {exc}"
        ok = root.tag.endswith("svg") and len(root) > 0
        return ok, f"{name}: an SVG with {len(root)} top-level elements" if ok else f"{name} is an empty SVG"
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
            size = image.size
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        return False, f"{name} is not a readable image: {exc}"
    ok = min(size) >= 16
    return ok, f"{name}: a {size[0]}x{size[1]} image" + ("" if ok else ", too small to be a chart")


def _chart_exists(test: AcceptanceTest, workspace: Path) -> tuple[bool, str]:
    path, name = _artifact(test, workspace, folder_ok=True)
    if path.is_file():
        return _one_chart(path, name)
    charts = sorted(p for p in path.rglob("*") if p.suffix.lower() in CHART_SUFFIXES and p.is_file())
    if not charts:
        return False, f"{name} holds no PNG, JPEG or SVG chart"
    results = [_one_chart(p, f"{name}/{p.relative_to(path).as_posix()}") for p in charts]
    bad = [reason for ok, reason in results if not ok]
    return (not bad, f"{len(charts)} charts, all readable" if not bad else "; ".join(bad))


def run_data_check(test: AcceptanceTest, workspace: Path) -> tuple[bool, str]:
    """(passed, reason); raises DataCheckError (a LookupError) when there is nothing to check."""
    return {"row_count": _row_count, "schema": _schema, "chart_exists": _chart_exists}[test.check_type](test, workspace)
