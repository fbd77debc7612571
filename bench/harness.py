"""What the benchmarks share: a local Ray cluster with Troupe deployed on it, the admin
key, waiting for tasks, percentiles, and the CPU each Troupe process spends."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
for _k, _v in {"RAY_USAGE_STATS_ENABLED": "0", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
               "LITELLM_LOCAL_MODEL_COST_MAP": "True", "TROUPE_MODEL_ALLOWED_HOSTS": "127.0.0.1"}.items():
    os.environ.setdefault(_k, _v)
from troupe import serve_ingress  # noqa: E402

serve_ingress.apply()  # HAProxy in front of the Gateway, as under `make run`; before Ray starts

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
POSTGRES = "postgres-server"

__all__ = ["POSTGRES", "Deployed", "ProcessCPU", "database", "deploy", "percentile", "start_profiles", "wait_all"]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


@contextmanager
def database(kind: str, home: Path) -> Iterator[str]:
    """A fresh store: SQLite under `home`, or a PostgreSQL database dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{home / 'troupe.db'}"
        return
    import sqlalchemy

    name = f"troupe_bench_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as c:
            c.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


@dataclass
class Deployed:
    base_url: str
    db_url: str
    home: Path
    app_name: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {(self.home / 'admin.key').read_text().strip()}"}


@contextmanager
def deploy(store: str = "sqlite", app_name: str = "bench", **args: Any) -> Iterator[Deployed]:
    """Ray (4 logical CPUs on this machine's cores), Serve, and Troupe with `args`, on a fresh store."""
    import ray
    from ray import serve

    from deployments.app import app

    home = Path(tempfile.mkdtemp(prefix=f"troupe-{app_name}-"))
    with database(store, home) as db_url:
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, namespace=f"troupe-{app_name}",
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0",
                                           "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1",
                                           "TROUPE_MODEL_ALLOWED_HOSTS": "127.0.0.1",
                                           # Serve's own settings, to measure them (e.g. RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP)
                                           **{k: v for k, v in os.environ.items() if k.startswith("RAY_SERVE_")}}})
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            # Limits far above the load, so that the benchmarks measure the runtime, not a 429.
            limits = {"requests_per_s": 100_000, "requests_burst": 100_000, "submissions_per_s": 100_000,
                      "submissions_burst": 100_000, "max_queued_tasks": 100_000}
            serve.run(app({"home": str(home), "database_url": db_url, "app_name": app_name,
                           "tool_modules": ["bench.tools"], "browser_num_cpus": 0,
                           "gateway": {"limits": limits, "max_queued_tasks": 100_000}, **args}),
                      name=app_name, route_prefix="/")
            yield Deployed(f"http://127.0.0.1:{port}", db_url, home, app_name)
        finally:
            serve.shutdown()
            ray.shutdown()


async def wait_all(store: Any, ids: list[str], timeout_s: float, tenant: str = "default") -> None:
    """Until every task has ended. Each poll is one count over the tasks' rows: listing them
    (and building their models) cost this driver up to 5 ms of CPU per node at 800 tasks,
    CPU the Troupe processes it measures then lacked."""
    from sqlalchemy import func, select

    from memory.schema import tasks
    from troupe.models import TaskStatus

    ended = [s.value for s in TaskStatus if s.terminal]
    unfinished = (select(func.count()).select_from(tasks)
                  .where(tasks.c.tenant == tenant, tasks.c.task_id.in_(ids), tasks.c.status.not_in(ended)))
    deadline = time.monotonic() + timeout_s
    left = len(ids)
    while left and time.monotonic() < deadline:
        async with store.reader.connect() as conn:
            left = (await conn.execute(unfinished)).scalar_one()
        if left:
            await asyncio.sleep(0.2)
    if left:
        raise TimeoutError(f"{left} tasks unfinished after {timeout_s}s")


class ProcessCPU:
    """CPU seconds (user + system) each Troupe process spends between `start()` and `stop()`,
    by role: Serve replicas by deployment, the Supervisor, Serve's proxy actors, HAProxy, this
    driver; and with `with_postgres`, the PostgreSQL server (all its processes) as `POSTGRES`."""

    def __init__(self, app_name: str, with_postgres: bool = False):
        import psutil
        import ray._private.state as state

        self.procs: dict[str, list[Any]] = {}
        for a in state.actors().values():
            name, pid = str(a.get("Name") or ""), a.get("Pid")
            if a.get("State") != "ALIVE" or not pid:
                continue
            if name.startswith(f"SERVE_REPLICA::{app_name}#"):
                role = name.split("#")[1]
            elif name.startswith("SERVE_PROXY_ACTOR"):
                role = "HTTPProxy"
            elif name.endswith("-supervisor"):
                role = "Supervisor"
            else:
                continue
            try:
                self.procs.setdefault(role, []).append(psutil.Process(int(pid)))
            except psutil.NoSuchProcess:
                pass
        # HAProxy (troupe/serve_ingress.py) is a child process of Serve's proxy actor, not an actor.
        for proxy in self.procs.get("HTTPProxy", []):
            try:
                self.procs.setdefault("HAProxy", []).extend(
                    p for p in proxy.children(recursive=True) if p.name().startswith("haproxy"))
            except psutil.NoSuchProcess:
                pass
        self.with_postgres = with_postgres
        self.procs["bench-driver"] = [psutil.Process()]
        self._start: dict[str, dict[int, float]] = {}

    def _postgres(self) -> list[Any]:
        """The PostgreSQL server's processes now: the store's own CPU, on the same cores. A
        backend lives as long as its connection, so they are listed at start() and at stop()."""
        import psutil

        return [p for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"]

    def _now(self) -> dict[str, dict[int, float]]:
        """CPU seconds so far, by role and pid, of the processes alive now."""
        procs = {**self.procs, **({POSTGRES: self._postgres()} if self.with_postgres else {})}
        out: dict[str, dict[int, float]] = {}
        for role, ps in procs.items():
            out[role] = {}
            for p in ps:
                try:
                    t = p.cpu_times()
                    out[role][p.pid] = t.user + t.system
                except Exception:
                    pass
        return out

    def pids(self) -> dict[str, list[int]]:
        return {role: [p.pid for p in procs] for role, procs in self.procs.items()}

    def start(self) -> None:
        self._start = self._now()

    def stop(self) -> dict[str, float]:
        """CPU seconds per role since start(). A process that started since counts whole; one
        that ended since (a closed PostgreSQL connection) is missed."""
        end = self._now()
        return {role: round(sum(cpu - self._start.get(role, {}).get(pid, 0.0) for pid, cpu in pids.items()), 3)
                for role, pids in end.items()}


def start_profiles(pids: dict[str, list[int]], out: Path, duration_s: int) -> list[subprocess.Popen]:
    """py-spy records each Troupe Python process (not the bench's own) for `duration_s`, in py-spy's raw
    format (one stack and its sample count per line), only while it holds the GIL: CPU, not waiting."""
    out.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).with_name("py-spy")
    return [subprocess.Popen([str(spy), "record", "-p", str(pid), "-d", str(duration_s), "-r", "200", "--nonblocking",
                              "--gil", "-f", "raw", "-o", str(out / f"{role}-{pid}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for role, ps in pids.items() if role not in ("bench-driver", "HAProxy") for pid in ps]
