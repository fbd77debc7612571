"""Fixtures for ingestion and semantic-memory tests.

Stores run on Qdrant local mode (owned by one actor on the shared Ray cluster) and, when
`TROUPE_QDRANT_URL` is set, also on that server. Each test module gets its own collection
prefix, so modules never see each other's points.
"""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from memory.semantic import QdrantSettings, QueryEncoder, SemanticStore, connect

_TARGETS = ["local", pytest.param("server", marks=pytest.mark.skipif(
    not os.environ.get("TROUPE_QDRANT_URL"), reason="set TROUPE_QDRANT_URL to run the store tests on a Qdrant server"
))]


@pytest.fixture(scope="session")
def local_store_path(tmp_path_factory, ray_cluster):
    from actors.qdrant_owner import release_owner

    path = tmp_path_factory.mktemp("qdrant")
    yield path
    release_owner(path)


@pytest.fixture(scope="session")
def query_encoder():
    """One query-side model load for the whole session."""
    return QueryEncoder()


@pytest.fixture(scope="module", params=_TARGETS)
def qdrant_settings(request, local_store_path) -> QdrantSettings:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    if request.param == "local":
        yield QdrantSettings(path=local_store_path, prefix=prefix)
        return
    settings = QdrantSettings(
        url=os.environ["TROUPE_QDRANT_URL"], api_key=os.environ.get("TROUPE_QDRANT_API_KEY"), prefix=prefix
    )
    yield settings
    client = connect(settings)
    for name in (settings.chunks, settings.documents, settings.files):
        client.delete_collection(name)


@pytest.fixture(scope="module")
def store(qdrant_settings, query_encoder) -> SemanticStore:
    return SemanticStore(qdrant_settings, encoder=query_encoder)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open an internet connection fails the test (loopback stays allowed)."""
    real_connect, real_create = socket.socket.connect, socket.create_connection

    def check(address):
        host = address[0] if isinstance(address, tuple) else address
        if not (isinstance(host, str) and (host.startswith(("127.", "/")) or host in ("localhost", "::1"))):
            raise AssertionError(f"network access attempted: {address!r}")

    def connect(self, address):
        check(address)
        return real_connect(self, address)

    def create_connection(address, *args, **kwargs):
        check(address)
        return real_create(address, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "create_connection", create_connection)
