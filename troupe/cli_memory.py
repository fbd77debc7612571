"""`troupe memory ...`: list, add and forget what Troupe remembers across tasks (routes in
deployments/routes/memory.py)."""

from __future__ import annotations

from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from troupe.client import TroupeClient, TroupeError

__all__ = ["memory_app"]

memory_app = typer.Typer(help="Long-term memory: preferences and facts kept across tasks.", no_args_is_help=True)
console = Console()
UrlOpt = typer.Option(None, "--url", envvar="TROUPE_URL", help="Troupe's address (default http://127.0.0.1:8000).")
TenantOpt = typer.Option(None, "--tenant", envvar="TROUPE_TENANT", help="Act for this tenant (admin keys only).")


def _call(url: str | None, tenant: str | None, method: str, path: str, **kw: Any) -> Any:
    try:
        r = TroupeClient(url, tenant)._request(method, path, **kw)
    except TroupeError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    return r.json() if r.content else None


@memory_app.command("list")
def list_(project: Optional[str] = typer.Option(None, "--project", help="Tenant-wide memories and this project's."),
          url: Optional[str] = UrlOpt, tenant: Optional[str] = TenantOpt) -> None:
    """What Troupe remembers, newest first, with where each came from."""
    rows = _call(url, tenant, "GET", "/v1/memory", params={"project": project} if project else None)
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
    m = _call(url, tenant, "POST", "/v1/memory", json={k: v for k, v in body.items() if v is not None})
    console.print(f"{m['memory_id']} {m['kind']}: {m['text']}")


@memory_app.command("forget")
def forget(memory_id: str, url: Optional[str] = UrlOpt, tenant: Optional[str] = TenantOpt) -> None:
    """Forget one memory: later tasks no longer see it."""
    _call(url, tenant, "DELETE", f"/v1/memory/{memory_id}")
    console.print(f"forgot {memory_id}")
