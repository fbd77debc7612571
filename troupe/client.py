"""A small HTTP client for Troupe's API, used by the CLI."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import httpx_sse

__all__ = ["TroupeClient", "TroupeError", "find_api_key", "is_local"]

DEFAULT_URL = "http://127.0.0.1:8000"


class TroupeError(Exception):
    """Something the user should read: the server's problem detail or why nothing answered."""


def is_local(url: str) -> bool:
    return urlparse(url).hostname in ("127.0.0.1", "localhost", "::1")


def find_api_key(base_url: str) -> str | None:
    """TROUPE_API_KEY, else (for a server on this machine) the first admin key that Troupe
    wrote to $TROUPE_HOME/admin.key on its first start."""
    key = os.environ.get("TROUPE_API_KEY")
    if key:
        return key.strip()
    if is_local(base_url):
        path = Path(os.environ.get("TROUPE_HOME", ".troupe")).expanduser() / "admin.key"
        try:
            return path.read_text().strip() or None
        except OSError:
            return None
    return None


class TroupeClient:
    def __init__(self, base_url: str | None = None, tenant: str | None = None, timeout_s: float = 30,
                 api_key: str | None = None):
        self.base_url = (base_url or os.environ.get("TROUPE_URL") or DEFAULT_URL).rstrip("/")
        headers: dict[str, str] = {}
        key = api_key or find_api_key(self.base_url)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        tenant = tenant or os.environ.get("TROUPE_TENANT")
        if tenant:  # otherwise the key's own tenant
            headers["X-Troupe-Tenant"] = tenant
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.ConnectError:
            raise TroupeError(f"nothing answers at {self.base_url}; start Troupe with `make run` "
                              "or point TROUPE_URL at a running server") from None
        except httpx.TimeoutException:
            raise TroupeError(f"{self.base_url} did not answer in time") from None
        if r.status_code >= 400:
            self._raise_for(r)
        return r

    def submit(self, body: dict[str, Any], attachments: Sequence[Path] = ()) -> dict[str, Any]:
        """Submit a task; with `attachments` (local files) as multipart, the files uploaded with it."""
        if not attachments:
            return self._request("POST", "/v1/tasks", json=body).json()
        with ExitStack() as stack:
            files = [("files", (p.name, stack.enter_context(open(p, "rb")))) for p in attachments]
            return self._request("POST", "/v1/tasks", data={"task": json.dumps(body)}, files=files).json()

    def task(self, task_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/tasks/{task_id}").json()

    def tasks(self, status: str | None = None, limit: int = 20) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        return self._request("GET", "/v1/tasks", params=params).json()

    def cancel(self, task_id: str) -> dict[str, Any]:
        return self._request("DELETE", f"/v1/tasks/{task_id}").json()

    def message(self, task_id: str, text: str, on_running: str = "enqueue") -> dict[str, Any]:
        return self._request("POST", f"/v1/tasks/{task_id}/messages",
                             json={"text": text, "on_running": on_running}).json()

    def raise_budget(self, task_id: str, **limits: Any) -> dict[str, Any]:
        body = {k: v for k, v in limits.items() if v is not None}
        return self._request("POST", f"/v1/tasks/{task_id}/budget", json=body).json()

    def templates(self) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/templates").json()

    def artifacts(self, task_id: str) -> list[dict[str, Any]]:
        return self._request("GET", f"/v1/tasks/{task_id}/artifacts").json()

    def download(self, task_id: str, name: str, dest: Path) -> Path:
        r = self._request("GET", f"/v1/tasks/{task_id}/artifacts/{name}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(r.content)
        return dest

    # -- collections ------------------------------------------------------------------------

    def ingest(self, collection: str, paths: Sequence[str], **options: Any) -> dict[str, Any]:
        """Start ingesting server-side paths; options: config (IngestConfig fields), project_id."""
        return self._request("POST", f"/v1/collections/{collection}/ingest",
                             json={"paths": list(paths), **options}).json()

    def ingest_upload(self, collection: str, files: Sequence[Path], **options: Any) -> dict[str, Any]:
        """Start ingesting local files or archives (.zip, .tar.gz ...), uploaded as multipart."""
        with ExitStack() as stack:
            parts = [("files", (p.name, stack.enter_context(open(p, "rb")))) for p in files]
            data = {"options": json.dumps(options)} if options else None
            return self._request("POST", f"/v1/collections/{collection}/ingest", files=parts, data=data,
                                 timeout=httpx.Timeout(30, write=None)).json()

    def ingest_job(self, job_id: str, *, files: bool = False) -> dict[str, Any]:
        return self._request("GET", f"/v1/ingest/{job_id}", params={"files": str(files).lower()}).json()

    def ingest_events(self, job_id: str) -> Iterator[dict[str, Any]]:
        """The job's state each time it changes until it ends (the last one has its report),
        resuming the stream if the connection drops."""
        last: str | None = None
        for _ in range(100):
            try:
                headers = {"Last-Event-ID": last} if last else {}
                with httpx_sse.connect_sse(self.http, "GET", f"/v1/ingest/{job_id}/events", headers=headers,
                                           timeout=None) as source:
                    if source.response.status_code >= 400:
                        source.response.read()
                        self._raise_for(source.response)
                    for sse in source.iter_sse():
                        if not sse.data:  # a keep-alive comment
                            continue
                        last = sse.id or last
                        yield json.loads(sse.data)
                return
            except httpx.ConnectError:
                raise TroupeError(f"nothing answers at {self.base_url}; start Troupe with `make run`") from None
            except (httpx.ReadError, httpx.RemoteProtocolError):
                continue

    def search(self, collection: str, query: str, *, limit: int = 5, **options: Any) -> dict[str, Any]:
        """Hybrid search; options: filters, task_id, project_id."""
        # The first search of a replica loads the query model: give it longer than other calls.
        return self._request("POST", f"/v1/collections/{collection}/search",
                             json={"query": query, "limit": limit, **options}, timeout=120).json()

    def events(self, task_id: str, *, follow: bool = True, after: int = 0) -> Iterator[dict[str, Any]]:
        """Events from `after` on; with `follow`, live until the task ends, resuming the
        stream from the last seen event if the connection drops."""
        if not follow:
            yield from self._request("GET", f"/v1/tasks/{task_id}/events",
                                     params={"stream": "false", "after": after}).json()
            return
        last = after
        for _ in range(100):
            try:
                with httpx_sse.connect_sse(self.http, "GET", f"/v1/tasks/{task_id}/events",
                                           headers={"Last-Event-ID": str(last)}, timeout=None) as source:
                    if source.response.status_code >= 400:
                        source.response.read()
                        self._raise_for(source.response)
                    for sse in source.iter_sse():
                        if not sse.data:  # a keep-alive comment (httpx_sse repeats the last id)
                            continue
                        last = int(sse.id)
                        yield json.loads(sse.data)
                return
            except httpx.ConnectError:
                raise TroupeError(f"nothing answers at {self.base_url}; start Troupe with `make run`") from None
            except (httpx.ReadError, httpx.RemoteProtocolError):
                continue  # the stream dropped: resume from the last event we saw

    # -- keys (admin) -------------------------------------------------------------------

    def create_key(self, tenant: str, role: str, *, name: str = "", expires_in: str | None = None) -> dict[str, Any]:
        body = {"tenant": tenant, "role": role, "name": name, "expires_in": expires_in}
        return self._request("POST", "/v1/keys", json={k: v for k, v in body.items() if v is not None}).json()

    def keys(self, tenant: str | None = None) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/keys", params={"tenant": tenant} if tenant else None).json()

    def revoke_key(self, key_id: str) -> dict[str, Any]:
        return self._request("DELETE", f"/v1/keys/{key_id}").json()

    def audit(self, **filters: Any) -> dict[str, Any]:
        return self._request("GET", "/v1/audit", params={k: v for k, v in filters.items() if v is not None}).json()

    @staticmethod
    def _raise_for(r: httpx.Response) -> None:
        try:
            body = r.json()
            detail = body.get("detail") or body
        except ValueError:
            detail = r.text[:500]
        if r.status_code == 401:
            detail = f"{detail} (the CLI sends TROUPE_API_KEY, or $TROUPE_HOME/admin.key for a local server)"
        raise TroupeError(f"{r.status_code}: {detail}")
