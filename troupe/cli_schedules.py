"""`troupe schedules ...`: create, list, show, pause, resume, delete (routes in deployments/routes/schedules.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from troupe.cli_common import TenantOpt, UrlOpt, call_api

__all__ = ["schedules_app"]

schedules_app = typer.Typer(help="Schedules: tasks submitted by cron or every N seconds.", no_args_is_help=True)
console = Console()


def _show(s: dict[str, Any]) -> None:
    rule = f"cron {s['cron']} ({s['timezone']})" if s.get("cron") else f"every {s['every_s']:g} s"
    state = "paused" if s["paused"] else f"next {s['next_at']}"
    console.print(f"[bold]{s['schedule_id']}[/bold] {s['name']}: {rule}, overlap {s['overlap']}, "
                  f"catch_up {s['catch_up']}; {state}")


@schedules_app.command("create")
def create(
    name: str,
    goal: str = typer.Option(..., "--goal", help="The goal each run submits."),
    cron: Optional[str] = typer.Option(None, "--cron", help="5-field cron, e.g. '0 9 * * mon-fri'."),
    every_s: Optional[float] = typer.Option(None, "--every-s", help="Or: every so many seconds."),
    timezone: str = typer.Option("UTC", "--timezone", help="IANA timezone of the cron expression."),
    plan: Optional[Path] = typer.Option(None, "--plan", help="A plan (JSON) each run uses."),
    overlap: str = typer.Option("skip", "--overlap", help="skip, queue or allow."),
    catch_up: str = typer.Option("latest", "--catch-up", help="none, latest or all."),
    url: Optional[str] = UrlOpt, tenant: Optional[str] = TenantOpt,
) -> None:
    """Create a schedule."""
    task: dict[str, Any] = {"goal": goal}
    if plan is not None:
        task["plan"] = json.loads(plan.read_text())
    body = {"name": name, "cron": cron, "every_s": every_s, "timezone": timezone, "task": task,
            "overlap": overlap, "catch_up": catch_up}
    _show(call_api(url, tenant, "POST", "/v1/schedules", json={k: v for k, v in body.items() if v is not None}))


@schedules_app.command("list")
def list_(url: Optional[str] = UrlOpt, tenant: Optional[str] = TenantOpt) -> None:
    """List the tenant's schedules."""
    table = Table(title="Schedules")
    for col in ("id", "name", "rule", "overlap", "catch_up", "next", "last task"):
        table.add_column(col)
    for s in call_api(url, tenant, "GET", "/v1/schedules"):
        rule = s["cron"] or f"every {s['every_s']:g} s"
        table.add_row(s["schedule_id"], s["name"], rule, s["overlap"], s["catch_up"],
                      "paused" if s["paused"] else (s["next_at"] or "")[:19], s["last_task_id"] or "")
    console.print(table)


@schedules_app.command("show")
def show(schedule_id: str, url: Optional[str] = UrlOpt, tenant: Optional[str] = TenantOpt) -> None:
    """A schedule and its recent slots with their tasks."""
    s = call_api(url, tenant, "GET", f"/v1/schedules/{schedule_id}")
    _show(s)
    for r in s["runs"]:
        console.print(f"  {r['slot_at']}  {r['state']:8} {r['task_id'] or ''} {r['detail'] or ''}")


@schedules_app.command("pause")
def pause(schedule_id: str, url: Optional[str] = UrlOpt, tenant: Optional[str] = TenantOpt) -> None:
    """Stop firing until resumed."""
    _show(call_api(url, tenant, "POST", f"/v1/schedules/{schedule_id}/pause"))


@schedules_app.command("resume")
def resume(schedule_id: str, url: Optional[str] = UrlOpt, tenant: Optional[str] = TenantOpt) -> None:
    """Fire again from the next slot."""
    _show(call_api(url, tenant, "POST", f"/v1/schedules/{schedule_id}/resume"))


@schedules_app.command("delete")
def delete(schedule_id: str, url: Optional[str] = UrlOpt, tenant: Optional[str] = TenantOpt) -> None:
    """Delete a schedule (its tasks stay)."""
    call_api(url, tenant, "DELETE", f"/v1/schedules/{schedule_id}")
    console.print(f"deleted {schedule_id}")
