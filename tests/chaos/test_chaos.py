"""The chaos run in every `make test`: a seeded workload on a Troupe app of its own, on
SQLite and on PostgreSQL, while a seeded killer SIGKILLs Conductor, ToolPool, BrowserPool,
Supervisor and the whole app, and a scripted user answers questions about calls in doubt
with `retry` or `skip`. The checker (tests/chaos/harness.py) judges from external ledgers
(the tools' file, the web site's hits) and the event logs: every task done, no completed
step run again, no side-effecting call run twice without the user's `retry` nor after a
`skip`, dense seqs, outputs consistent with their inputs.
A failure prints its seed: `bench/chaos.py --seed N` replays the same schedule."""

from __future__ import annotations

import os
import uuid

import pytest
import sqlalchemy

from memory.store import EventStore
from tests.chaos.harness import ChaosRun, agent_reply, check
from tests.chaos.site import ChaosSite
from tests.conftest import _make_app
from tests.support.scripted_llm import router_config
from tests.test_store import PG_ADMIN

pytestmark = pytest.mark.ray

TASKS = int(os.environ.get("TROUPE_CHAOS_TASKS", "30"))
KILLS = int(os.environ.get("TROUPE_CHAOS_KILLS", "10"))


@pytest.fixture
def database(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'chaos.db'}"
        return
    name = f"troupe_chaos_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE {name}")
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    with admin.connect() as c:
        c.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.dispose()


@pytest.mark.timeout(420)
@pytest.mark.parametrize("database", ["sqlite", "postgres"], indirect=True)
async def test_every_promise_holds_under_random_kills(database, request, serve_http, tmp_path_factory,
                                                      scripted_llm_server, tmp_path):
    store_kind = request.node.callspec.id
    seed = int(os.environ.get("TROUPE_CHAOS_SEED", uuid.uuid4().int % 1_000_000))
    scripted_llm_server.reset()
    scripted_llm_server.add(agent_reply, times=None)
    app = _make_app(serve_http, tmp_path_factory, f"troupe-chaos-{store_kind}", f"/chaos-{store_kind}",
                    database_url=database, tool_modules=["tools.builtin", "tools.web.tools", "tests.chaos.tools"],
                    llm=router_config(scripted_llm_server, num_retries=0, fallbacks=[], cooldown_time=0),
                    supervisor={"max_backoff_s": 2})
    store = EventStore(database)
    site = ChaosSite()
    try:
        run = ChaosRun(app.base_url, store, tmp_path / "external.ledger", site.url, seed, TASKS, KILLS, app.name,
                       app.deploy, timeout_s=240, api_key=app.admin_key)
        figures = await run.run()
        verdict = await check(store, run.task_ids, run.ledger, site.hits)
        print(f"chaos {store_kind} seed={seed}: {figures} {verdict}")
        assert not verdict["violations"], (f"seed {seed} ({store_kind}): replay with TROUPE_CHAOS_SEED={seed}; "
                                           + "; ".join(verdict["violations"][:20]))
        assert verdict["done"] == TASKS
    finally:
        site.close()
        await store.close()
        app.delete()
        scripted_llm_server.reset()
