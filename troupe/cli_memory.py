"""`troupe memory ...`: list, add and forget what Troupe remembers across tasks (routes in
deployments/routes/memory.py)."""

from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from troupe.cli_common import TenantOpt, UrlOpt, call_api

__all__ = ["memory_app"]

memory_app = typer.Typer(help="Long-term memory: preferences and facts kept across tasks.", no_args_is_help=True)
console = Console()


@memory_app.command("list")
def list_(project: Optional[str] = typer.Option(None, "--project", help="Tenant-wide memories and this project's."),
          url: Optional[str] = UrlOpt, tenant: Optional[str] = TenantOpt) -> None:
    """What Troupe remembers, newest first, with where each came from."""
    rows = call_api(url, tenant, "GET", "/v1/memory", params={"project": project} if project else None)
    table = Table("id", "kind", "text", "from")
    for m in rows:
        source = m["source"]
        table.add_row(m["memory_id"], m["kind"], m["text"],
                      f"task {source['task_id']} ({source['where']})" if source["task_id"] else source["where"])
    console.print(table)


@memory_app.command("add")
def add(text: str, fact: bool = typer.Option(False, "--fact", help="A fact, recalled when relevant (default: a "
                                                                    "preference, recalled for every task)."),
        project: Optional[str] = typer.Option(None, "--project", help="Only for tasks of this project."),
        url: Optional[str] = UrlOpt, tenant: Optional[str] = TenantOpt) -> None:
    """Remember something for later tasks."""
    body = {"text": text, "kind": "fact" if fact else "preference", "project": project}
    m = call_api(url, tenant, "POST", "/v1/memory", json={k: v for k, v in body.items() if v is not None})
    console.print(f"{m['memory_id']} {m['kind']}: {m['text']}")


@memory_app.command("forget")
def forget(memory_id: str, url: Optional[str] = UrlOpt, tenant: Optional[str] = TenantOpt) -> None:
    """Forget one memory: later tasks no longer see it."""
    call_api(url, tenant, "DELETE", f"/v1/memory/{memory_id}")
    console.print(f"forgot {memory_id}")
