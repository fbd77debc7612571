"""`troupe`: submit goals, watch them run, fetch what they publish."""

from __future__ import annotations

import json
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Optional

import typer
import yaml
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from troupe.client import TroupeClient, TroupeError, is_local

app = typer.Typer(help="Troupe: autonomous agents on Ray Serve.", no_args_is_help=True, add_completion=False)
console = Console()
err = Console(stderr=True)

STYLE = {"done": "green", "failed": "red", "cancelled": "yellow", "running": "cyan", "retrying": "magenta",
         "pending": "dim", "waiting_for_input": "yellow"}

UrlOpt = typer.Option(None, "--url", envvar="TROUPE_URL", help="Troupe's address (default http://127.0.0.1:8000).")
TenantOpt = typer.Option(None, "--tenant", envvar="TROUPE_TENANT", help=(
    "Act for this tenant (admin keys only; default: the key's own tenant)."))


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
                                 "plan.set", "plan.corrected", "tool.result", "agent.step"):
                task = client.task(task_id)
                live.update(_node_table(task))
                if task["status"] == "waiting_for_input":
                    break  # the task needs the user: say so instead of watching a quiet stream
    return client.task(task_id)


@app.command()
def run(
    goal: str = typer.Argument(..., help="What you want done, in plain words."),
    plan: Optional[Path] = typer.Option(None, "--plan", "-p", help="A plan or submission as YAML/JSON."),
    follow: bool = typer.Option(True, "--follow/--no-follow", help="Show live progress until the task ends."),
    priority: str = typer.Option("normal", help="high, normal or low."),
    attach: Optional[list[Path]] = typer.Option(None, "--attach", "-a", help=(
        "A file to attach (repeatable): uploaded with the task and ingested into its scope before planning.")),
    url: Optional[str] = UrlOpt,
    tenant: Optional[str] = TenantOpt,
) -> None:
    """Submit a goal (with --plan, run that plan) and follow it to the end."""
    body = _load_submission(goal, plan)
    body.setdefault("priority", priority)
    for f in attach or []:
        if not f.is_file():
            _fail(f"cannot attach {f}: not a file")
    client = _client(url, tenant)
    try:
        created = client.submit(body, attachments=attach or [])
        task_id = created["task_id"]
        console.print(f"task [bold]{task_id}[/bold] {created['status']}")
        if not follow:
            return
        task = _follow(client, task_id)
        if task["artifacts"]:
            console.print(_artifact_table(task["artifacts"]))
            console.print(f"fetch with: troupe artifacts {task_id} --out ./out")
        if task["status"] == "waiting_for_input":
            err.print(f"[yellow]waiting for you[/yellow]: {task.get('reason') or ''}\n"
                      f"answer with: troupe say {task_id} \"...\"")
            raise typer.Exit(2)
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
            if task.get("reason"):
                waiting = f" (waiting on {task['waiting_on']})" if task.get("waiting_on") else ""
                console.print(f"  [bold]{task['status']}{waiting}[/]: {task['reason']}")
            usage = task.get("usage") or {}
            if usage.get("llm_calls"):
                budget = task.get("budget") or {}
                console.print(f"  model calls {usage['llm_calls']}/{budget.get('max_llm_calls')}, "
                              f"cost ${usage['cost_usd']:.4f}/${budget.get('max_cost_usd')}, "
                              f"tokens {usage['tokens_in']} in / {usage['tokens_out']} out")
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
def say(task_id: str, text: str,
        interrupt: bool = typer.Option(False, "--interrupt", help="A running task revises its plan for it now."),
        reject: bool = typer.Option(False, "--reject", help="Refuse to send it if the task is running."),
        url: Optional[str] = UrlOpt, tenant: Optional[str] = TenantOpt) -> None:
    """Send a follow-up, or the reply a waiting task asks for. To a running task, the message
    starts the next iteration once this one ends, unless --interrupt or --reject."""
    if interrupt and reject:
        _fail("give --interrupt or --reject, not both")
    on_running = "interrupt" if interrupt else "reject" if reject else "enqueue"
    try:
        sent = _client(url, tenant).message(task_id, text, on_running)
        console.print(f"sent to {task_id} ({sent.get('applied', 'sent')})")
    except TroupeError as exc:
        _fail(str(exc))


@app.command()
def budget(task_id: str,
           calls: Optional[int] = typer.Option(None, "--calls", help="New max_llm_calls."),
           cost: Optional[float] = typer.Option(None, "--cost", help="New max_cost_usd."),
           url: Optional[str] = UrlOpt, tenant: Optional[str] = TenantOpt) -> None:
    """Raise a task's model budget; a task paused on it resumes."""
    if calls is None and cost is None:
        _fail("give --calls and/or --cost")
    try:
        result = _client(url, tenant).raise_budget(task_id, max_llm_calls=calls, max_cost_usd=cost)
        console.print(f"budget of {task_id}: {result['budget']}")
    except TroupeError as exc:
        _fail(str(exc))


@app.command()
def templates(url: Optional[str] = UrlOpt, tenant: Optional[str] = TenantOpt) -> None:
    """Plan templates: built in, and learned from verified tasks."""
    try:
        items = _client(url, tenant).templates()
    except TroupeError as exc:
        _fail(str(exc))
        return
    table = Table(title="templates")
    for col in ("kind", "name", "about"):
        table.add_column(col)
    for t in items:
        if t["kind"] == "learned":
            table.add_row("learned", t["template_id"], t["goal"][:70])
        else:
            table.add_row("built in", t.get("name", ""), (t.get("title") or t.get("description") or "")[:70])
    console.print(table)


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


def _pack(folder: Path, dest: Path) -> Path:
    """The folder's files (hidden ones skipped, as ingestion skips them) as a .tar.gz."""
    with tarfile.open(dest, "w:gz") as tar:
        for p in sorted(folder.rglob("*")):
            rel = p.relative_to(folder)
            if p.is_file() and not any(part.startswith(".") for part in rel.parts):
                tar.add(p, arcname=rel.as_posix())
    return dest


def _ingest_summary(job: dict[str, Any]) -> Table:
    report, progress = job.get("report") or {}, job["progress"]
    table = Table(title=f"ingest {job['job_id'][:8]} into {job['collection']}  "
                        f"[{STYLE.get(job['status'], '')}]{job['status']}")
    table.add_column("")
    table.add_column("", justify="right")
    by_status = report.get("by_status", {})
    rows = [("files", report.get("files", progress["files_seen"])),
            *((f"  {status}", n) for status, n in by_status.items()),
            ("chunks stored", report.get("chunks_stored", progress["chunks_stored"])),
            ("chunks replaced", report.get("chunks_deleted", 0)),
            ("docs/s", f"{report.get('docs_per_s', progress['docs_per_s']):.2f}"),
            ("elapsed", f"{report.get('elapsed_s', progress['elapsed_s']):.1f}s")]
    for name, value in rows:
        table.add_row(name, str(value))
    return table


def _failure_table(failures: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{len(failures)} files failed")
    table.add_column("file", style="red")
    table.add_column("reason")
    for f in failures:
        table.add_row(f["source"], f.get("reason") or "")
    return table


def _follow_ingest(client: TroupeClient, job_id: str) -> dict[str, Any]:
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("files"),
               TextColumn("{task.fields[chunks]} chunks  {task.fields[rate]:.1f} docs/s"), TimeElapsedColumn())
    job: dict[str, Any] = {}
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("queued", total=None, chunks=0, rate=0.0)
        for job in client.ingest_events(job_id):
            p = job["progress"]
            bar.update(task, description=job["status"], total=p["files_seen"] or None, completed=p["files_done"],
                       chunks=p["chunks_stored"], rate=p["docs_per_s"])
    return job if job.get("status") in ("done", "failed") else client.ingest_job(job_id)


@app.command()
def ingest(
    path: str = typer.Argument(..., help="A file or folder to ingest (or an archive: .zip, .tar.gz ...)."),
    collection: str = typer.Option(..., "--collection", "-c", help="The collection to ingest into."),
    upload: Optional[bool] = typer.Option(None, "--upload/--no-upload", help=(
        "Send the files rather than their path; default: send the path when Troupe runs on this machine.")),
    follow: bool = typer.Option(True, "--follow/--no-follow", help="Show progress until the job ends."),
    url: Optional[str] = UrlOpt,
    tenant: Optional[str] = TenantOpt,
) -> None:
    """Ingest documents into a collection (txt, md, html, eml, docx, pptx, xlsx, csv, pdf)."""
    client = _client(url, tenant)
    local = Path(path).expanduser()
    if upload is None:
        # A path is read by the server only inside its TROUPE_INGEST_ROOTS (none by default).
        upload = not (is_local(client.base_url) and os.environ.get("TROUPE_INGEST_ROOTS"))
    if upload and not local.exists():
        _fail(f"{path} does not exist; pass a file or folder on this machine")
    try:
        if not upload:
            created = client.ingest(collection, [str(local.resolve()) if local.exists() else path])
        elif local.is_file():
            created = client.ingest_upload(collection, [local])
        else:
            with tempfile.TemporaryDirectory() as tmp:
                created = client.ingest_upload(collection, [_pack(local, Path(tmp) / f"{local.resolve().name}.tar.gz")])
        job_id = created["job_id"]
        console.print(f"ingest job [bold]{job_id}[/bold] {created['status']}")
        if not follow:
            return
        job = _follow_ingest(client, job_id)
        console.print(_ingest_summary(job))
        failures = (job.get("report") or {}).get("failures") or []
        if failures:
            console.print(_failure_table(failures))
        if job["status"] != "done":
            err.print(f"[red]{job['status']}[/red]: {job.get('error') or ''}")
            raise typer.Exit(1)
    except TroupeError as exc:
        _fail(str(exc))


@app.command()
def search(
    query: str = typer.Argument(..., help="The question or keywords to look for."),
    collection: str = typer.Option(..., "--collection", "-c", help="The collection to search."),
    limit: int = typer.Option(5, "--limit", "-n", help="How many passages, best first."),
    url: Optional[str] = UrlOpt,
    tenant: Optional[str] = TenantOpt,
) -> None:
    """Search a collection: passages best first, with their source file and place."""
    try:
        results = _client(url, tenant).search(collection, query, limit=limit)["results"]
    except TroupeError as exc:
        _fail(str(exc))
    if not results:
        console.print(f"no passages in {collection} match {query!r}")
        return
    table = Table(title=f"{collection}: {query}")
    for col in ("#", "score", "source", "text"):
        table.add_column(col)
    for r in results:
        text = " ".join(r["text"].split())
        table.add_row(str(r["rank"]), f"{r['score']:.3f}", f"{r['path']}\n{r['location']}",
                      text[:300] + ("…" if len(text) > 300 else ""))
    console.print(table)


keys_app = typer.Typer(help="API keys (admin): create, list, revoke.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    tenant: str = typer.Option(..., "--tenant", help="The tenant the key acts for."),
    role: str = typer.Option("member", "--role", help="viewer, member or admin."),
    name: str = typer.Option("", "--name", help="What the key is for."),
    expires: Optional[str] = typer.Option(None, "--expires", help="e.g. 30d, 12h; default: never."),
    url: Optional[str] = UrlOpt,
) -> None:
    """Create a key. Its secret is printed once: store it now."""
    try:
        key = _client(url, None).create_key(tenant, role, name=name, expires_in=expires)
    except TroupeError as exc:
        _fail(str(exc))
    console.print(f"key [bold]{key['key_id']}[/bold] for tenant {key['tenant']} ({key['role']})"
                  + (f", expires {key['expires_at']}" if key["expires_at"] else ""))
    console.print("secret (shown once; use it as TROUPE_API_KEY):")
    print(key["secret"])


@keys_app.command("list")
def keys_list(tenant: Optional[str] = typer.Option(None, "--tenant"), url: Optional[str] = UrlOpt) -> None:
    """List keys: id, prefix, tenant, role, expiry, revocation. Never secrets."""
    try:
        keys = _client(url, None).keys(tenant)
    except TroupeError as exc:
        _fail(str(exc))
    table = Table(title="API keys")
    for col in ("id", "prefix", "tenant", "role", "name", "created", "expires", "revoked"):
        table.add_column(col)
    for k in keys:
        table.add_row(k["key_id"], k["prefix"] + "…", k["tenant"], k["role"], k["name"], k["created_at"][:16],
                      (k["expires_at"] or "")[:16], (k["revoked_at"] or "")[:16])
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str, url: Optional[str] = UrlOpt) -> None:
    """Revoke a key: refused on every Gateway replica within a second."""
    try:
        key = _client(url, None).revoke_key(key_id)
    except TroupeError as exc:
        _fail(str(exc))
    console.print(f"revoked {key['key_id']} ({key['prefix']}…, tenant {key['tenant']})")


from troupe.cli_schedules import schedules_app  # noqa: E402  (a group of its own module)

app.add_typer(schedules_app, name="schedules")

from troupe.cli_memory import memory_app  # noqa: E402  (a group of its own module)

app.add_typer(memory_app, name="memory")

from troupe.cli_dashboards import dashboards_app  # noqa: E402

app.add_typer(dashboards_app, name="dashboards")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
