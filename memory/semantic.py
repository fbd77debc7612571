"""Semantic memory: documents' chunks in Qdrant, searched by hybrid (dense + BM25) retrieval.

One store over qdrant-client: a Qdrant server when `TROUPE_QDRANT_URL` is set, else local mode
under `$TROUPE_HOME/qdrant`, reached through its single owner actor (actors/qdrant_owner.py).
Local mode keeps everything in one process's memory and scans payloads on every filter: it
suits a laptop or a test run; a cluster (or more than ~100k chunks) wants the server.

Three Qdrant collections hold everything, partitioned by payload (Qdrant's multitenancy
pattern, which keeps one HNSW graph instead of one per user collection):

- `<prefix>_chunks`: one point per chunk, dense + sparse vectors, text and citation payload;
- `<prefix>_documents`: one vectorless point per distinct document: its parsed text by page and
  its MinHash signature (near-duplicate detection);
- `<prefix>_files`: one vectorless point per source file: content hash and outcome, which
  makes re-ingestion idempotent.

Scopes: `tenant` is a hard boundary; inside it a document belongs to a task, a project or the
whole org. A search from a task looks in the task's scope first, then the project's, then the
org's, and narrower results rank first.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

if TYPE_CHECKING:
    from memory.ingest import IngestConfig, IngestReport, ProgressCallback

__all__ = [
    "ChunkFilter",
    "DocumentText",
    "LazySemanticStore",
    "PageText",
    "Passage",
    "QdrantSettings",
    "QueryEncoder",
    "Scope",
    "SemanticStore",
    "StoreError",
    "base_filter",
    "connect",
    "doc_id_of",
    "ensure_schema",
    "point_id",
]

DENSE = "dense"
SPARSE = "bm25"
_ID_NAMESPACE = uuid.UUID("6f0e3c1a-55a5-4d1c-9a51-2f6b1d3b8e21")


class StoreError(Exception):
    """A store request that cannot be served as asked; the message says what to change."""


class QdrantSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    url: str | None = Field(None, description="Qdrant server; unset means embedded local mode.")
    api_key: str | None = Field(None, repr=False)
    path: Path = Field(Path(".troupe/qdrant"), description="Local-mode directory (one owner process).")
    prefix: str = Field("troupe", pattern=r"^[A-Za-z0-9_-]+$", description="Prefix of the Qdrant collections.")
    dim: int = 384

    @classmethod
    def from_env(cls, **overrides: Any) -> QdrantSettings:
        home = Path(os.environ.get("TROUPE_HOME", ".troupe")).expanduser().resolve()
        values: dict[str, Any] = {
            "url": os.environ.get("TROUPE_QDRANT_URL") or None,
            "api_key": os.environ.get("TROUPE_QDRANT_API_KEY") or None,
            "path": home / "qdrant",
        }
        return cls(**(values | overrides))

    @classmethod
    def for_app(cls, home: Path) -> QdrantSettings:
        """A Troupe app's store: the server at `TROUPE_QDRANT_URL`, else local mode under its home."""
        return cls.from_env(path=Path(home) / "qdrant")

    @property
    def chunks(self) -> str:
        return f"{self.prefix}_chunks"

    @property
    def documents(self) -> str:
        return f"{self.prefix}_documents"

    @property
    def files(self) -> str:
        return f"{self.prefix}_files"


def connect(settings: QdrantSettings) -> Any:
    """A blocking QdrantClient (server), or the local store's owner-actor client."""
    if settings.url:
        from qdrant_client import QdrantClient

        return QdrantClient(url=settings.url, api_key=settings.api_key, timeout=60)
    from actors.qdrant_owner import owner_client

    return owner_client(settings.path)


_KEYWORD_FIELDS = ("tenant", "scope", "collection", "doc_id", "doc_hash", "source", "element_type", "status")


def ensure_schema(client: Any, settings: QdrantSettings) -> None:
    """Create the three collections (and, on a server, payload indexes) if missing."""
    from qdrant_client import models

    for name in (settings.chunks, settings.documents, settings.files):
        if client.collection_exists(name):
            continue
        try:
            if name == settings.chunks:
                client.create_collection(
                    name,
                    vectors_config={DENSE: models.VectorParams(size=settings.dim, distance=models.Distance.COSINE)},
                    sparse_vectors_config={SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)},
                )
            else:
                client.create_collection(name, vectors_config={})
        except Exception:
            # Another process (a ToolPool replica, the ingest jobs) made it between our check
            # and our create: theirs is the same schema.
            if not client.collection_exists(name):
                raise
            continue
        if settings.url:  # local mode scans payloads and ignores (warns about) indexes
            for field in _KEYWORD_FIELDS:
                schema: Any = models.PayloadSchemaType.KEYWORD
                if field == "tenant":
                    schema = models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True)
                client.create_payload_index(name, field, field_schema=schema)
            client.create_payload_index(name, "page", field_schema=models.PayloadSchemaType.INTEGER)


def point_id(*parts: str | int) -> str:
    """Deterministic point ids make every write an idempotent upsert."""
    return str(uuid.uuid5(_ID_NAMESPACE, "\x1f".join(map(str, parts))))


def doc_id_of(doc_hash: str) -> str:
    """The id agents see: short enough to quote back in a tool call, 64 bits of the hash."""
    return doc_hash[:16]


class Scope(BaseModel):
    """Where a document lives inside a tenant: the whole org, one project, or one task."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["org", "project", "task"] = "org"
    id: str | None = None

    @property
    def key(self) -> str:
        return self.kind if self.kind == "org" else f"{self.kind}:{self.id}"

    @classmethod
    def org(cls) -> Scope:
        return cls()

    @classmethod
    def project(cls, project_id: str) -> Scope:
        return cls(kind="project", id=project_id)

    @classmethod
    def task(cls, task_id: str) -> Scope:
        return cls(kind="task", id=task_id)

    @classmethod
    def chain(cls, task_id: str | None = None, project_id: str | None = None) -> list[Scope]:
        """Narrowest first: the task's scope, its project's, then the org's."""
        chain = [cls.task(task_id)] if task_id else []
        chain += [cls.project(project_id)] if project_id else []
        return chain + [cls.org()]


class ChunkFilter(BaseModel):
    """Metadata conditions on chunks; every set field must match."""

    model_config = ConfigDict(extra="forbid")

    sources: list[str] | None = Field(None, description="Only these source files.")
    doc_ids: list[str] | None = None
    element_types: list[str] | None = Field(None, description="e.g. CompositeElement, Table, TableChunk.")
    formats: list[str] | None = Field(None, description="File extensions, e.g. pdf, docx.")
    page_gte: int | None = None
    page_lte: int | None = None


class Passage(BaseModel):
    text: str
    score: float
    source: str
    doc_id: str
    location: str
    page: int | None = None
    section: str | None = None
    chunk_index: int
    collection: str
    scope: str

    @classmethod
    def of_hit(cls, hit: Any) -> Passage:
        """A chunk point Qdrant returned, with its score."""
        p = hit.payload or {}
        return cls(text=p["text"], score=hit.score, source=p["source"], doc_id=p["doc_id"], location=p["location"],
                   page=p.get("page"), section=p.get("section"), chunk_index=p["chunk_index"],
                   collection=p["collection"], scope=p["scope"])

    @computed_field  # type: ignore[prop-decorator]
    @property
    def citation(self) -> str:
        """File name and place, e.g. "q3-report.pdf, page 4"."""
        return f"{Path(self.source).name}, {self.location}"


class PageText(BaseModel):
    page: int
    text: str


class DocumentText(BaseModel):
    doc_id: str
    source: str
    collection: str
    page_count: int = Field(description="Pages (slides, sheets) in the whole document.")
    pages: list[PageText] = Field(description="The requested range.")
    truncated: bool = Field(False, description="The text stopped at max_chars.")


def base_filter(tenant: str, collection: str | None, scopes: Sequence[Scope]) -> list[Any]:
    from qdrant_client import models

    must: list[Any] = [models.FieldCondition(key="tenant", match=models.MatchValue(value=tenant))]
    if collection is not None:
        must.append(models.FieldCondition(key="collection", match=models.MatchValue(value=collection)))
    keys = [s.key for s in scopes]
    must.append(models.FieldCondition(key="scope", match=models.MatchAny(any=keys)))
    return must


def _chunk_conditions(filters: ChunkFilter | None) -> list[Any]:
    from qdrant_client import models

    if filters is None:
        return []
    must: list[Any] = []
    for field, values in (
        ("source", filters.sources),
        ("doc_id", filters.doc_ids),
        ("element_type", filters.element_types),
        ("format", filters.formats),
    ):
        if values:
            must.append(models.FieldCondition(key=field, match=models.MatchAny(any=values)))
    if filters.page_gte is not None or filters.page_lte is not None:
        must.append(models.FieldCondition(key="page", range=models.Range(gte=filters.page_gte, lte=filters.page_lte)))
    return must


class QueryEncoder:
    """Encodes queries as the pipeline encodes chunks; the model loads on first use."""

    def __init__(self, model: str | None = None):
        # Imported here: memory.ingest imports this module, so a top-level import would be circular.
        from memory.ingest.encoders import DEFAULT_MODEL, SparseEncoder

        self.model_name = model or DEFAULT_MODEL
        self.sparse = SparseEncoder()
        self._model: Any = None
        self._lock = threading.Lock()  # searches run in threads; load the model once

    def dense(self, text: str) -> list[float]:
        with self._lock:
            if self._model is None:
                from memory.ingest.encoders import load_dense_model

                self._model = load_dense_model(self.model_name)
        return self._model.encode([text], normalize_embeddings=True, show_progress_bar=False)[0].tolist()


class SemanticStore:
    """Search and read stored documents. Async methods run the blocking client in a thread."""

    def __init__(self, settings: QdrantSettings, *, client: Any = None, encoder: QueryEncoder | None = None):
        self.settings = settings
        self.client = client if client is not None else connect(settings)
        self.encoder = encoder or QueryEncoder()
        ensure_schema(self.client, settings)

    @classmethod
    def from_env(cls, **overrides: Any) -> SemanticStore:
        return cls(QdrantSettings.from_env(**overrides))

    # -- search ---------------------------------------------------------------------------

    def search_sync(
        self,
        query: str,
        *,
        tenant: str,
        collection: str | None,
        scopes: Sequence[Scope],
        limit: int = 5,
        filters: ChunkFilter | None = None,
    ) -> list[Passage]:
        from qdrant_client import models

        if not query.strip():
            raise StoreError("the query is empty; pass the question or keywords to search for")
        dense = self.encoder.dense(query)
        sparse = self.encoder.sparse.encode_query(query)
        candidates = max(4 * limit, 20)
        passages: list[Passage] = []
        seen: set[str] = set()
        for scope in scopes:  # narrowest first; wider scopes only fill what is left
            query_filter = models.Filter(
                must=base_filter(tenant, collection, [scope]) + _chunk_conditions(filters)
            )
            prefetch = [models.Prefetch(query=dense, using=DENSE, limit=candidates, filter=query_filter)]
            if sparse.indices:  # a query of stop words only has no sparse part
                prefetch.append(
                    models.Prefetch(
                        query=models.SparseVector(indices=sparse.indices, values=sparse.values),
                        using=SPARSE,
                        limit=candidates,
                        filter=query_filter,
                    )
                )
            hits = self.client.query_points(
                self.settings.chunks,
                prefetch=prefetch,
                query=models.FusionQuery(fusion=models.Fusion.RRF),
                query_filter=query_filter,
                limit=limit,
                with_payload=True,
            ).points
            for hit in hits:
                if str(hit.id) in seen:
                    continue
                seen.add(str(hit.id))
                passages.append(Passage.of_hit(hit))
            if len(passages) >= limit:
                break
        return passages[:limit]

    async def search(self, query: str, **kwargs: Any) -> list[Passage]:
        """Hybrid search; see `search_sync` for the arguments."""
        return await asyncio.to_thread(self.search_sync, query, **kwargs)

    # -- documents ------------------------------------------------------------------------

    def read_document_sync(
        self,
        doc_id: str,
        *,
        tenant: str,
        scopes: Sequence[Scope],
        page_start: int = 1,
        page_end: int | None = None,
        max_chars: int = 50_000,
    ) -> DocumentText:
        from qdrant_client import models

        conditions = base_filter(tenant, None, scopes) + [
            models.FieldCondition(key="doc_id", match=models.MatchValue(value=doc_id))
        ]
        records, _ = self.client.scroll(
            self.settings.documents,
            scroll_filter=models.Filter(must=conditions),
            limit=len(scopes) + 1,
            with_payload=True,
        )
        if not records:
            raise StoreError(
                f"no document {doc_id!r} in tenant {tenant!r} within scopes {[s.key for s in scopes]}; "
                "use a doc_id returned by search_documents"
            )
        # The narrowest scope's copy wins, as in search.
        order = {s.key: i for i, s in enumerate(scopes)}
        payload = min((r.payload or {} for r in records), key=lambda p: order.get(p.get("scope"), len(order)))
        pages = payload.get("pages", [])
        last = page_end if page_end is not None else len(pages)
        if page_start < 1 or last < page_start:
            raise StoreError(f"page range {page_start}..{last} is empty; the document has {len(pages)} pages")
        selected, used, truncated = [], 0, False
        for page in pages:
            if page_start <= page["page"] <= last:
                text = page["text"]
                if used + len(text) > max_chars:
                    text, truncated = text[: max(0, max_chars - used)], True
                selected.append(PageText(page=page["page"], text=text))
                used += len(text)
                if truncated:
                    break
        return DocumentText(
            doc_id=doc_id,
            source=payload["source"],
            collection=payload["collection"],
            page_count=len(pages),
            pages=selected,
            truncated=truncated,
        )

    async def read_document(self, doc_id: str, **kwargs: Any) -> DocumentText:
        return await asyncio.to_thread(self.read_document_sync, doc_id, **kwargs)

    # -- ingestion ------------------------------------------------------------------------

    async def ingest(
        self,
        sources: str | Path | Sequence[str | Path],
        *,
        collection: str,
        tenant: str = "default",
        scope: Scope | None = None,
        config: IngestConfig | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> IngestReport:
        """Run `memory.ingest.ingest` into this store, in a thread. `on_progress` is called in
        that thread: hand it `loop.call_soon_threadsafe(queue.put_nowait, p)` to stream."""
        from memory.ingest import ingest

        return await asyncio.to_thread(
            ingest, sources, collection=collection, tenant=tenant, scope=scope, config=config,
            settings=self.settings, client=self.client, on_progress=on_progress,
        )

    # -- bookkeeping ----------------------------------------------------------------------

    def count_sync(self, *, tenant: str, collection: str, scope: Scope, kind: str = "chunks") -> int:
        from qdrant_client import models

        s = self.settings
        name = {"chunks": s.chunks, "documents": s.documents, "files": s.files}[kind]
        flt = models.Filter(must=base_filter(tenant, collection, [scope]))
        return self.client.count(name, count_filter=flt, exact=True).count

    async def count(self, **kwargs: Any) -> int:
        return await asyncio.to_thread(self.count_sync, **kwargs)

    def has_collection_sync(self, *, tenant: str, collection: str) -> bool:
        """Whether anything was ever ingested into `collection` for `tenant`, in any scope."""
        from qdrant_client import models

        flt = models.Filter(must=[models.FieldCondition(key="tenant", match=models.MatchValue(value=tenant)),
                                  models.FieldCondition(key="collection", match=models.MatchValue(value=collection))])
        records, _ = self.client.scroll(self.settings.files, scroll_filter=flt, limit=1, with_payload=False)
        return bool(records)

    async def has_collection(self, **kwargs: Any) -> bool:
        return await asyncio.to_thread(self.has_collection_sync, **kwargs)


class LazySemanticStore:
    """A `SemanticStore` made on first use (in a thread: connecting blocks), so that a process
    that never touches documents never connects to Qdrant nor loads the query model."""

    def __init__(self, settings: QdrantSettings):
        self.settings = settings
        self._store: SemanticStore | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> SemanticStore:
        async with self._lock:
            if self._store is None:
                self._store = await asyncio.to_thread(SemanticStore, self.settings)
            return self._store

    async def search(self, query: str, **kwargs: Any) -> list[Passage]:
        return await (await self.get()).search(query, **kwargs)

    async def read_document(self, doc_id: str, **kwargs: Any) -> DocumentText:
        return await (await self.get()).read_document(doc_id, **kwargs)

    async def ingest(self, sources: Any, **kwargs: Any) -> IngestReport:
        return await (await self.get()).ingest(sources, **kwargs)

    async def count(self, **kwargs: Any) -> int:
        return await (await self.get()).count(**kwargs)

    async def has_collection(self, **kwargs: Any) -> bool:
        return await (await self.get()).has_collection(**kwargs)
