"""Retrieval per document, for extraction across a whole collection: the collection's
documents, and each document's passages nearest a question in one grouped query (Qdrant's
`query_points_groups`, grouped by `doc_id`) rather than one search per document."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from memory.semantic import DENSE, Passage, Scope, SemanticStore, StoreError, base_filter

__all__ = ["best_per_document", "list_documents"]

_PAGE = 1000


def list_documents(store: SemanticStore, *, tenant: str, collection: str,
                   scopes: Sequence[Scope]) -> list[dict[str, str]]:
    """Every document of the collection within the scopes, once each (a document ingested in
    two scopes is one document), ordered by doc_id: a stable order to shard by."""
    from qdrant_client import models

    flt = models.Filter(must=base_filter(tenant, collection, scopes))
    found: dict[str, dict[str, str]] = {}
    offset = None
    while True:
        records, offset = store.client.scroll(store.settings.documents, scroll_filter=flt, limit=_PAGE,
                                              offset=offset, with_payload=["doc_id", "source"])
        for r in records:
            payload = r.payload or {}
            found.setdefault(payload["doc_id"], {"doc_id": payload["doc_id"], "source": payload["source"]})
        if offset is None:
            break
    return [found[k] for k in sorted(found)]


def best_per_document(store: SemanticStore, query: str, *, tenant: str, collection: str, scopes: Sequence[Scope],
                      doc_ids: Sequence[str], per_document: int = 3) -> dict[str, list[Passage]]:
    """For each of `doc_ids`, its `per_document` passages nearest `query` (by meaning), best first."""
    from qdrant_client import models

    if not query.strip():
        raise StoreError("the question is empty; say what to extract from each document")
    if not doc_ids:
        return {}
    flt = models.Filter(must=base_filter(tenant, collection, scopes) + [
        models.FieldCondition(key="doc_id", match=models.MatchAny(any=list(doc_ids)))])
    result: Any = store.client.query_points_groups(
        store.settings.chunks, query=store.encoder.dense(query), using=DENSE, group_by="doc_id",
        group_size=per_document, limit=len(doc_ids), query_filter=flt, with_payload=True)
    return {str(g.id): [Passage.of_hit(h) for h in g.hits] for g in result.groups}
