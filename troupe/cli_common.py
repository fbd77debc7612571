"""What the CLI's command groups (schedules, memory) share: the --url and --tenant options,
and one call to the API that prints the API's error and exits 2 on failure."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console

from troupe.client import TroupeClient, TroupeError

__all__ = ["TenantOpt", "UrlOpt", "call_api"]

UrlOpt = typer.Option(None, "--url", envvar="TROUPE_URL", help="Troupe's address (default http://127.0.0.1:8000).")
TenantOpt = typer.Option(None, "--tenant", envvar="TROUPE_TENANT", help="Act for this tenant (admin keys only).")


def call_api(url: str | None, tenant: str | None, method: str, path: str, **kw: Any) -> Any:
    """The response's JSON (None for an empty body, e.g. 204)."""
    try:
        r = TroupeClient(url, tenant)._request(method, path, **kw)
    except TroupeError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    return r.json() if r.content else None
