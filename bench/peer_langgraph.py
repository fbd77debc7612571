"""The peer for bench/runtime.py: the same 5-node DAG (a -> b, c, d -> e, no-op nodes) on
LangGraph with its durable checkpointer (`durability="sync"`: every step's checkpoint is
committed before the next step runs), in one process, on SQLite or PostgreSQL.

    python bench/peer_langgraph.py --tasks 200 [--database-url postgresql://...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, TypedDict

__all__ = ["run_langgraph"]


def _merge(a: dict[str, str], b: dict[str, str]) -> dict[str, str]:
    return {**a, **b}


class _State(TypedDict):
    out: Annotated[dict[str, str], _merge]


def _graph(checkpointer: Any) -> Any:
    from langgraph.graph import END, START, StateGraph

    def step(name: str, deps: list[str]) -> Any:
        async def node(state: _State) -> dict[str, Any]:  # what Troupe's noop tool computes
            return {"out": {name: "".join(state["out"].get(d, "") for d in deps) + name}}
        return node

    g = StateGraph(_State)
    g.add_node("a", step("a", []))
    for n in ("b", "c", "d"):
        g.add_node(n, step(n, ["a"]))
        g.add_edge("a", n)
        g.add_edge(n, "e")
    g.add_node("e", step("e", ["b", "c", "d"]))
    g.add_edge(START, "a")
    g.add_edge("e", END)
    return g.compile(checkpointer=checkpointer)


async def _measure(graph: Any, n: int) -> dict[str, Any]:
    async def one(i: int) -> float:
        t0 = time.monotonic()
        result = await graph.ainvoke({"out": {}}, {"configurable": {"thread_id": f"bench-{i}-{time.time_ns()}"}},
                                     durability="sync")
        assert result["out"]["e"] == "abacade", result
        return time.monotonic() - t0

    await one(-1)  # warm up
    solo = [await one(-2 - i) for i in range(20)]
    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = time.monotonic() - t0
    return {"tasks": n, "elapsed_s": round(elapsed, 2), "tasks_per_s": round(n / elapsed, 2),
            "node_ms_unloaded_p50": round(statistics.median(solo) * 1000 / 5, 2)}


async def run_langgraph(n: int, database_url: str | None = None) -> dict[str, Any]:
    """Run `n` concurrent tasks; returns its figures. SQLite in a temp dir unless a
    PostgreSQL URL (plain `postgresql://`) is given."""
    if database_url and database_url.startswith("postgresql"):
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        from psycopg_pool import AsyncConnectionPool

        url = database_url.replace("postgresql+asyncpg://", "postgresql://")
        async with AsyncConnectionPool(url, max_size=10, kwargs={"autocommit": True, "prepare_threshold": 0},
                                       open=False) as pool:
            saver = AsyncPostgresSaver(pool)
            await saver.setup()
            return {"peer": "langgraph+AsyncPostgresSaver", **await _measure(_graph(saver), n)}
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    path = Path(tempfile.mkdtemp(prefix="lg-bench-")) / "checkpoints.db"
    async with AsyncSqliteSaver.from_conn_string(str(path)) as saver:
        return {"peer": "langgraph+AsyncSqliteSaver", **await _measure(_graph(saver), n)}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=200)
    p.add_argument("--database-url", default=None)
    args = p.parse_args()
    print(json.dumps(asyncio.run(run_langgraph(args.tasks, args.database_url))))
