"""`troupe`: submit goals, watch them run, fetch what they publish."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table

from troupe.client import TroupeClient, TroupeError

app = typer.Typer(help="Troupe: autonomous agents on Ray Serve.", no_args_is_help=True, add_completion=False)
console = Console()
err = Console(stderr=True)

STYLE = {"done": "green", "failed": "red", "cancelled": "yellow", "running": "cyan", "retrying": "magenta",
         "pending": "dim", "waiting_for_input": "yellow"}

UrlOpt = typer.Option(None, "--url", envvar="TROUPE_URL", help="Troupe's address (default http://127.0.0.1:8000).")
TenantOpt = typer.Option(None, "--tenant", envvar="TROUPE_TENANT", help="Tenant (default 'default').")


def _client(url: str | None, tenant: str | None) -> TroupeClient:
    return TroupeClient(url, tenant)


def _fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


def _load_submission(goal: str, plan_file: Path | None) -> dict[str, Any]:
    body: dict[str, Any] = {"goal": goal}
    if plan_file is None:
        return body
    try:
        data = yaml.safe_load(plan_file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        _fail(f"cannot read {plan_file}: {exc}")
    if not isinstance(data, dict):
        _fail(f"{plan_file} must hold a plan ({{nodes: [...]}}) or a submission ({{plan: ..., acceptance_tests: ...}})")
    if "nodes" in data:
        body["plan"] = data
    else:
        body.update({k: v for k, v in data.items() if k != "goal"})
    return body


def _node_table(task: dict[str, Any]) -> Table:
    table = Table(title=f"{task['id'][:8]}  {task['goal'][:60]}  [{STYLE.get(task['status'], '')}]{task['status']}")
    for col in ("node", "tool", "status", "attempts", "result"):
        table.add_column(col)
    plan = task.get("plan") or {"nodes": []}
    for node in plan["nodes"]:
        state = task["nodes"].get(node["id"], {})
        status = state.get("status", "pending")
        result = state.get("error") or state.get("output")
        text = result if isinstance(result, str) else json.dumps(result) if result is not None else ""
        table.add_row(node["id"], node.get("tool") or node["kind"], f"[{STYLE.get(status, '')}]{status}",
                      str(state.get("attempts", 0)), text.replace("\n", " ")[:60])
    if task.get("queue_position"):
        table.caption = f"queued: position {task['queue_position']}"
    elif task.get("reason"):
        table.caption = task["reason"][:200]
    return table


def _artifact_table(artifacts: list[dict[str, Any]]) -> Table:
    table = Table(title="artifacts")
    for col in ("name", "type", "bytes", "sha256"):
        table.add_column(col)
    for a in artifacts:
        table.add_row(a["name"], a["media_type"], str(a["size"]), a["sha256"][:16])
    return table


def _follow(client: TroupeClient, task_id: str) -> dict[str, Any]:
    task = client.task(task_id)
    with Live(_node_table(task), console=console, refresh_per_second=8) as live:
        for event in client.events(task_id):
            if event["type"] in ("task.status", "node.started", "node.done", "node.failed", "node.retry",
                                 "plan.set", "tool.result"):
                task = client.task(task_id)
                live.update(_node_table(task))
    return client.task(task_id)


@app.command()
def run(
    goal: str = typer.Argument(..., help="What you want done, in plain words."),
    plan: Optional[Path] = typer.Option(None, "--plan", "-p", help="A plan or submission as YAML/JSON."),
    follow: bool = typer.Option(True, "--follow/--no-follow", help="Show live progress until the task ends."),
    priority: str = typer.Option("normal", help="high, normal or low."),
    url: Optional[str] = UrlOpt,
    tenant: Optional[str] = TenantOpt,
) -> None:
    """Submit a goal (with --plan, run that plan) and follow it to the end."""
    body = _load_submission(goal, plan)
    body.setdefault("priority", priority)
    client = _client(url, tenant)
    try:
        created = client.submit(body)
        task_id = created["task_id"]
        console.print(f"task [bold]{task_id}[/bold] {created['status']}")
        if not follow:
            return
        task = _follow(client, task_id)
        if task["artifacts"]:
            console.print(_artifact_table(task["artifacts"]))
            console.print(f"fetch with: troupe artifacts {task_id} --out ./out")
        if task["status"] != "done":
            err.print(f"[red]{task['status']}[/red]: {task.get('reason') or ''}")
            raise typer.Exit(1)
    except TroupeError as exc:
        _fail(str(exc))


@app.command()
def status(task_id: Optional[str] = typer.Argument(None), limit: int = 20,
           url: Optional[str] = UrlOpt, tenant: Optional[str] = TenantOpt) -> None:
    """One task's state, or the latest tasks."""
    client = _client(url, tenant)
    try:
        if task_id:
            task = client.task(task_id)
            console.print(_node_table(task))
            for v in task.get("verdicts", []):
                console.print(f"  {'[green]pass' if v['passed'] else '[red]fail'}[/] {v['test_id']}: {v['reason']}")
            if task["artifacts"]:
                console.print(_artifact_table(task["artifacts"]))
            return
        table = Table(title="tasks")
        for col in ("id", "status", "priority", "created", "goal"):
            table.add_column(col)
        for t in client.tasks(limit=limit)["items"]:
            table.add_row(t["task_id"], f"[{STYLE.get(t['status'], '')}]{t['status']}", t["priority"],
                          t["created_at"][:19], t["goal"][:60])
        console.print(table)
    except TroupeError as exc:
        _fail(str(exc))


@app.command()
def events(task_id: str, follow: bool = typer.Option(False, "--follow", "-f", help="Stay until the task ends."),
           url: Optional[str] = UrlOpt, tenant: Optional[str] = TenantOpt) -> None:
    """Print a task's event log."""
    client = _client(url, tenant)
    try:
        for e in client.events(task_id, follow=follow):
            payload = json.dumps(e["payload"], ensure_ascii=False)
            console.print(f"{e['seq']:>5} {e['ts'][11:23]} [bold]{e['type']:<20}[/bold] {payload[:160]}",
                          highlight=False)
    except TroupeError as exc:
        _fail(str(exc))


@app.command()
def cancel(task_id: str, url: Optional[str] = UrlOpt, tenant: Optional[str] = TenantOpt) -> None:
    """Cancel a task."""
    try:
        _client(url, tenant).cancel(task_id)
        console.print(f"task {task_id} cancelling")
    except TroupeError as exc:
        _fail(str(exc))


@app.command()
def say(task_id: str, text: str, url: Optional[str] = UrlOpt, tenant: Optional[str] = TenantOpt) -> None:
    """Send a follow-up, or the reply a waiting task asks for."""
    try:
        _client(url, tenant).message(task_id, text)
        console.print(f"sent to {task_id}")
    except TroupeError as exc:
        _fail(str(exc))


@app.command()
def artifacts(task_id: str, out: Optional[Path] = typer.Option(None, "--out", "-o", help="Download into this folder."),
              url: Optional[str] = UrlOpt, tenant: Optional[str] = TenantOpt) -> None:
    """List a task's artifacts, or download them with --out."""
    client = _client(url, tenant)
    try:
        items = client.artifacts(task_id)
        console.print(_artifact_table(items))
        if out is not None:
            for a in items:
                path = client.download(task_id, a["name"], out / a["name"])
                console.print(f"saved {path}")
    except TroupeError as exc:
        _fail(str(exc))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
