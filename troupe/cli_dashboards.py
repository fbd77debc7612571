"""`troupe dashboards push`: load the generated dashboards into an existing Grafana.

Plain httpx against Grafana's HTTP API (`POST /api/dashboards/db`), not grafana-client: that
package pulls niquests/urllib3-future, which breaks schemathesis in the API fuzz tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import httpx
import typer
from rich.console import Console

__all__ = ["dashboards_app", "push_dashboards"]

dashboards_app = typer.Typer(help="Grafana dashboards (dashboards/json): push them to a Grafana.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)

JSON_DIR = Path(__file__).resolve().parent.parent / "dashboards" / "json"


class GrafanaError(RuntimeError):
    def __init__(self, name: str, status: int, detail: str):
        self.name, self.status, self.detail = name, status, detail
        hint = " (check --token / GRAFANA_TOKEN, or --user and --password)" if status in (401, 403) else ""
        super().__init__(f"Grafana refused {name}: HTTP {status}: {detail[:300]}{hint}")


def push_dashboards(grafana_url: str, *, token: str | None = None, user: str | None = None,
                    password: str | None = None, folder_uid: str | None = None,
                    source: Path = JSON_DIR, timeout_s: float = 30.0) -> list[dict]:
    """Create or overwrite every dashboard of `source` in Grafana; returns Grafana's answers."""
    files = sorted(source.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no dashboards in {source}: run `python -m dashboards.build`")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    auth = (user, password or "") if user and not token else None
    answers = []
    with httpx.Client(base_url=grafana_url.rstrip("/"), headers=headers, auth=auth, timeout=timeout_s) as client:
        for path in files:
            board = json.loads(path.read_text())
            board.pop("id", None)  # Grafana matches on uid; an id from elsewhere would clash
            body = {"dashboard": board, "overwrite": True, "message": "troupe dashboards push",
                    **({"folderUid": folder_uid} if folder_uid else {})}
            r = client.post("/api/dashboards/db", json=body)
            if r.status_code != 200:
                raise GrafanaError(path.name, r.status_code, r.text)
            answers.append(r.json())
    return answers


@dashboards_app.command("push")
def push(grafana_url: str = typer.Option(..., "--grafana-url", envvar="GRAFANA_URL", help="e.g. http://127.0.0.1:3000"),
         token: Optional[str] = typer.Option(None, "--token", envvar="GRAFANA_TOKEN",
                                             help="A service account token (Editor or Admin)."),
         user: Optional[str] = typer.Option(None, "--user", envvar="GRAFANA_USER", help="Basic auth, without a token."),
         password: Optional[str] = typer.Option(None, "--password", envvar="GRAFANA_PASSWORD"),
         folder_uid: Optional[str] = typer.Option(None, "--folder-uid", help="Put them in this folder."),
         source: Path = typer.Option(JSON_DIR, "--dir", help="Where the generated JSON is.")) -> None:
    """Create or update Troupe's dashboards in an existing Grafana (they read its default Prometheus)."""
    try:
        answers = push_dashboards(grafana_url, token=token, user=user, password=password, folder_uid=folder_uid,
                                  source=source)
    except (GrafanaError, FileNotFoundError, httpx.HTTPError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    for a in answers:
        console.print(f"{a.get('status', 'success')}: {grafana_url.rstrip('/')}{a.get('url', '')}")
