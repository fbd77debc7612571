"""Chaos benchmark: the chaos run of tests/chaos at any size, with its figures as JSON.

    python bench/chaos.py --tasks 200 --kills 40 --store sqlite|postgres [--seed N]

Starts a local Ray cluster and Serve, deploys Troupe with the chaos tools and a scripted
model, runs the seeded workload while the seeded killer SIGKILLs Conductor, ToolPool,
BrowserPool, Supervisor and the whole app, then prints the checker's verdict and figures. Exits 1 on
any violation (the seed is in the JSON: the same seed replays the same schedule).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
for _k, _v in {"RAY_USAGE_STATS_ENABLED": "0", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
               "LITELLM_LOCAL_MODEL_COST_MAP": "True", "TROUPE_MODEL_ALLOWED_HOSTS": "127.0.0.1"}.items():
    os.environ.setdefault(_k, _v)
from troupe import serve_ingress  # noqa: E402

serve_ingress.apply()  # HAProxy in front of the Gateway, as under `make run`; before Ray starts

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def database(kind: str, home: Path) -> tuple[str, str | None]:
    if kind == "sqlite":
        return f"sqlite+aiosqlite:///{home / 'troupe.db'}", None
    import sqlalchemy

    name = f"troupe_chaos_bench_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}", name


def drop(name: str | None) -> None:
    if name:
        import sqlalchemy

        admin = sqlalchemy.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


async def main(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from memory.store import EventStore
    from tests.chaos.harness import ChaosRun, agent_reply, check
    from tests.chaos.site import ChaosSite
    from tests.conftest import ServeApp, free_port
    from tests.support.scripted_llm import ScriptedLLM, router_config

    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    home = Path(tempfile.mkdtemp(prefix="troupe-chaos-"))
    url, pg_name = database(args.store, home)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, namespace="troupe-chaos-bench",
             runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
                                       "TROUPE_MODEL_ALLOWED_HOSTS": "127.0.0.1",
                                       # the workload's browser steps read a site on loopback
                                       "TROUPE_EGRESS_ALLOW_HOSTS": "127.0.0.1"}})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    llm = ScriptedLLM()
    llm.add(agent_reply, times=None)
    name = "troupe-chaos"
    app = ServeApp(name, "/", f"http://127.0.0.1:{port}", home, {
        "home": str(home), "app_name": name, "database_url": url,
        "tool_modules": ["tools.builtin", "tools.web.tools", "tests.chaos.tools"], "browser_num_cpus": 0,
        "llm": router_config(llm, num_retries=0, fallbacks=[], cooldown_time=0),
        "supervisor": {"max_backoff_s": 2}})
    store = EventStore(url)
    site = ChaosSite()
    try:
        await asyncio.to_thread(app.deploy)
        run = ChaosRun(app.base_url, store, home / "external.ledger", site.url, seed, args.tasks, args.kills, name,
                       app.deploy, max_app_kills=max(1, args.kills // 25), timeout_s=args.timeout_s,
                       api_key=app.admin_key)
        figures = await run.run()
        verdict = await check(store, run.task_ids, run.ledger, site.hits)
        violations = verdict.pop("violations")
        print(json.dumps({"store": args.store, **figures, **verdict, "finished": f"{verdict.get('done', 0)}/{args.tasks}",
                          "violations": len(violations), "first_violations": violations[:10]}))
        return 1 if violations or verdict.get("done", 0) != args.tasks else 0
    finally:
        site.close()
        await store.close()
        llm.close()
        serve.shutdown()
        ray.shutdown()
        drop(pg_name)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=200)
    p.add_argument("--kills", type=int, default=40)
    p.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--timeout-s", type=float, default=1800.0, help="How long to wait for the tasks after the last kill.")
    sys.exit(asyncio.run(main(p.parse_args())))
