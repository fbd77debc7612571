"""Dashboards as code: the committed JSON is what dashboards/build.py generates, and every
panel says what a bad value means."""

from __future__ import annotations

import http.server
import json
import socketserver
import threading

import pytest

from dashboards.build import JSON_DIR, render_all
from dashboards.panels import BOARDS


def test_committed_json_is_generated_json():
    rendered = render_all()
    assert sorted(rendered) == sorted(p.name for p in JSON_DIR.glob("*.json")), \
        "stray or missing files in dashboards/json: run `python -m dashboards.build`"
    for name, text in rendered.items():
        assert (JSON_DIR / name).read_text() == text, f"{name} is out of date: run `python -m dashboards.build`"


def test_boards_panels_and_descriptions():
    assert [b.title for b in BOARDS] == ["Troupe / Overview", "Troupe / Runtime", "Troupe / Models",
                                         "Troupe / Tools and browser", "Troupe / Ingestion"]
    for path in JSON_DIR.glob("*.json"):
        board = json.loads(path.read_text())
        assert board["uid"] == path.stem and board["panels"]
        assert [v["name"] for v in board["templating"]["list"]] == ["datasource"]
        for panel in board["panels"]:
            # A description that says what a bad value means, and queries on the chosen Prometheus.
            assert len(panel["description"]) > 40, panel["title"]
            assert panel["targets"] and all(t["expr"] and t["datasource"]["uid"] == "${datasource}"
                                            for t in panel["targets"])


@pytest.fixture
def grafana_api():
    """A loopback HTTP server answering `POST /api/dashboards/db` as Grafana documents it (no
    Grafana package exists for this machine): it keeps what it is sent, by uid."""
    received: dict[str, dict] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            if self.path != "/api/dashboards/db":
                return self._send(404, {"message": "Not found"})
            if self.headers.get("authorization") != "Bearer glsa_test":
                return self._send(401, {"message": "invalid API key"})
            board = body["dashboard"]
            received[board["uid"]] = body
            self._send(200, {"id": len(received), "uid": board["uid"], "url": f"/d/{board['uid']}/x",
                             "status": "success", "version": 1})

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()


def test_push_sends_every_dashboard(grafana_api):
    from typer.testing import CliRunner

    from troupe.cli import app

    url, received = grafana_api
    result = CliRunner().invoke(app, ["dashboards", "push", "--grafana-url", url, "--folder-uid", "ops"],
                                env={"GRAFANA_TOKEN": "glsa_test"})
    assert result.exit_code == 0, result.output
    assert sorted(received) == sorted(b.uid for b in BOARDS)
    for uid, body in received.items():
        assert body["overwrite"] is True and body["folderUid"] == "ops"
        assert body["dashboard"] == {k: v for k, v in json.loads((JSON_DIR / f"{uid}.json").read_text()).items()
                                     if k != "id"}
    assert f"{url}/d/troupe-overview/x" in result.output


def test_push_with_a_bad_token_says_what_to_fix(grafana_api):
    from typer.testing import CliRunner

    from troupe.cli import app

    url, received = grafana_api
    result = CliRunner().invoke(app, ["dashboards", "push", "--grafana-url", url, "--token", "wrong"])
    assert result.exit_code == 2 and received == {}
    assert "HTTP 401" in result.output and "GRAFANA_TOKEN" in result.output
