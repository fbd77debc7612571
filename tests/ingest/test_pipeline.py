"""The Ray Data pipeline end to end on 1,000 generated files: counts, dedupe, failures,
idempotent re-ingestion and replacement of a changed file."""

from __future__ import annotations

import random

import pytest

from memory.ingest import FileStatus, IngestProgress, ingest
from memory.semantic import Scope, base_filter, connect
from tests.ingest.corpus import mixed_corpus, paragraph, small_config, title, write_doc

pytestmark = pytest.mark.ray

COLLECTION = "reports"


def _points(settings) -> dict[str, tuple[str, str]]:
    """Every chunk point of the collection: id -> (doc_hash, ingested_at)."""
    from qdrant_client import models

    client, out, offset = connect(settings), {}, None
    flt = models.Filter(must=base_filter("default", COLLECTION, [Scope.org()]))
    while True:
        records, offset = client.scroll(settings.chunks, scroll_filter=flt, limit=2048, offset=offset,
                                        with_payload=["doc_hash", "ingested_at"])
        out.update({str(r.id): (r.payload["doc_hash"], r.payload["ingested_at"]) for r in records})
        if offset is None:
            return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return mixed_corpus(tmp_path_factory.mktemp("corpus"), 1000, corrupt=5, duplicates=20, seed=3)


@pytest.fixture(scope="module")
def first_run(corpus, qdrant_settings, ray_cluster):
    seen: list[IngestProgress] = []
    report = ingest(
        corpus.root, collection=COLLECTION, settings=qdrant_settings, config=small_config(), on_progress=seen.append
    )
    return report, seen


def test_every_chunk_is_stored_once_and_duplicates_only_once(corpus, first_run, store):
    report, _ = first_run
    assert store.count_sync(tenant="default", collection=COLLECTION, scope=Scope.org()) == corpus.expected_chunks
    assert report.progress.chunks_stored == corpus.expected_chunks
    originals = [d for d in corpus.docs if d.duplicate_of is None]
    documents = store.count_sync(tenant="default", collection=COLLECTION, scope=Scope.org(), kind="documents")
    assert documents == len(originals)
    assert report.count(FileStatus.stored) == len(originals) == 975
    # Files with the same bytes: the first by name is stored, the others point at it.
    by_source = {f.source: f for f in report.files}
    groups: dict[str, list] = {}
    for doc in corpus.docs:
        groups.setdefault(str(doc.duplicate_of or doc.path), []).append(doc)
    for docs in groups.values():
        outcomes = sorted((by_source[str(d.path)] for d in docs), key=lambda o: o.source)
        assert outcomes[0].status == FileStatus.stored and outcomes[0].chunks == docs[0].chunks
        assert all(o.status == FileStatus.duplicate and o.duplicate_of == outcomes[0].doc_id for o in outcomes[1:])


def test_corrupt_files_are_reported_with_reasons_and_do_not_fail_the_batch(corpus, first_run):
    report, _ = first_run
    failed = {f.source: f.reason for f in report.failures}
    assert sorted(failed) == sorted(str(p) for p in corpus.corrupt)
    assert all(reason and ":" in reason for reason in failed.values()), failed
    assert report.count(FileStatus.duplicate) == 20 and report.count(FileStatus.near_duplicate) == 0


def test_progress_is_reported_while_running_and_adds_up(corpus, first_run):
    report, seen = first_run
    final = report.progress
    assert final.done and final.files_seen == final.files_done == corpus.files == 1000
    assert (final.files_parsed, final.files_failed, final.files_duplicate) == (975, 5, 20)
    assert final.chunks_embedded == final.chunks_stored == corpus.expected_chunks
    assert final.docs_per_s > 0 and final.model_dump()["docs_per_s"] == final.docs_per_s
    assert len(seen) > 3 and seen[-1].done
    stored = [p.chunks_stored for p in seen]
    assert stored == sorted(stored) and 0 < stored[len(stored) // 2] < final.chunks_stored


def test_reingesting_unchanged_files_writes_nothing(corpus, first_run, qdrant_settings):
    before = _points(qdrant_settings)
    report = ingest(corpus.root, collection=COLLECTION, settings=qdrant_settings, config=small_config())
    assert _points(qdrant_settings) == before
    # Corrupt files included: their bytes did not change, so they are not retried either.
    assert report.progress.chunks_stored == 0 and report.count(FileStatus.unchanged) == 1000


def test_a_changed_file_replaces_only_its_own_chunks(corpus, first_run, qdrant_settings, store):
    before = _points(qdrant_settings)
    target = next(d for d in corpus.docs if d.path.suffix == ".docx" and d.duplicate_of is None
                  and not any(c.duplicate_of == d.path for c in corpus.docs))
    rng = random.Random(99)
    write_doc(target.path, [(title(rng), paragraph(rng, 400)) for _ in range(4)])

    report = ingest(corpus.root, collection=COLLECTION, settings=qdrant_settings, config=small_config())

    after = _points(qdrant_settings)
    changed = {f.source: f for f in report.files if f.status != FileStatus.unchanged and f.status != FileStatus.failed}
    assert list(changed) == [str(target.path)] and changed[str(target.path)].chunks == 4
    assert report.chunks_deleted == target.chunks
    removed, added = before.keys() - after.keys(), after.keys() - before.keys()
    assert len(removed) == target.chunks and len(added) == 4
    assert all(before[k] == after[k] for k in before.keys() & after.keys())
    total = store.count_sync(tenant="default", collection=COLLECTION, scope=Scope.org())
    assert total == corpus.expected_chunks - target.chunks + 4
