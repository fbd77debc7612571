"""The idempotency rules (memory/ingest/planning.py) and resource planning, without Ray or Qdrant."""

from __future__ import annotations

import pytest

from memory.ingest import IngestConfig, plan_resources
from memory.ingest.planning import DocRecord, FileRecord, Fingerprint, plan_run
from memory.ingest.progress import FileStatus

S, D = FileStatus.stored, FileStatus.duplicate


def test_new_files_are_parsed_once_per_content_first_name_first():
    plan = plan_run([Fingerprint("/b.txt", "h1"), Fingerprint("/a.txt", "h1"), Fingerprint("/c.txt", "h2")], {}, {})
    assert [fp.source for fp in plan.to_parse] == ["/a.txt", "/c.txt"]
    assert plan.followers == {"h1": ["/b.txt"]}
    assert not plan.decided and not plan.stale


def test_unchanged_files_are_left_alone():
    files = {"/a.txt": FileRecord("/a.txt", "h1", S)}
    plan = plan_run([Fingerprint("/a.txt", "h1")], files, {"h1": DocRecord("h1", "/a.txt", "sig")})
    assert plan.to_parse == [] and plan.decided["/a.txt"].status == FileStatus.unchanged
    assert plan.stale == set() and plan.reconcile == set()


def test_a_changed_file_is_parsed_and_its_old_document_goes():
    files = {"/a.txt": FileRecord("/a.txt", "h1", S)}
    plan = plan_run([Fingerprint("/a.txt", "h2")], files, {"h1": DocRecord("h1", "/a.txt", "sig")})
    assert [fp.doc_hash for fp in plan.to_parse] == ["h2"]
    assert plan.stale == {"h1"} and plan.lsh_seed == {}


def test_an_old_document_still_copied_elsewhere_stays_and_is_reconciled():
    files = {"/a.txt": FileRecord("/a.txt", "h1", S), "/copy.txt": FileRecord("/copy.txt", "h1", D, "h1")}
    docs = {"h1": DocRecord("h1", "/a.txt")}
    plan = plan_run([Fingerprint("/a.txt", "h2"), Fingerprint("/copy.txt", "h1")], files, docs)
    assert plan.stale == set() and plan.reconcile == {"h1"}
    assert plan.decided["/copy.txt"].status == FileStatus.unchanged


def test_new_bytes_equal_to_a_stored_document_are_a_duplicate():
    files = {"/a.txt": FileRecord("/a.txt", "h1", S)}
    docs = {"h1": DocRecord("h1", "/a.txt")}
    plan = plan_run([Fingerprint("/a.txt", "h1"), Fingerprint("/new.txt", "h1")], files, docs)
    assert plan.decided["/new.txt"].status == FileStatus.duplicate and plan.to_parse == []


def test_a_near_duplicate_of_a_removed_document_is_parsed_again():
    files = {
        "/a.txt": FileRecord("/a.txt", "h1", S),
        "/b.txt": FileRecord("/b.txt", "h9", FileStatus.near_duplicate, "h1"),
    }
    docs = {"h1": DocRecord("h1", "/a.txt")}
    plan = plan_run([Fingerprint("/a.txt", "h2"), Fingerprint("/b.txt", "h9")], files, docs)
    assert sorted(fp.source for fp in plan.to_parse) == ["/a.txt", "/b.txt"]


def test_unreadable_and_unsupported_files_fail_with_reasons():
    plan = plan_run([Fingerprint("/x.rtf"), Fingerprint("/y.pdf", error="PermissionError: denied")], {}, {})
    assert "unsupported file type 'rtf'" in plan.decided["/x.rtf"].reason
    assert plan.decided["/y.pdf"].reason == "PermissionError: denied"


def test_two_cores_get_two_single_threaded_actors_that_reserve_no_cpu():
    res = plan_resources(IngestConfig(), cluster_cpus=2)
    assert (res.embed_actors, res.embed_threads, res.embed_num_cpus, res.encode_batch_size) == (2, 1, 0, 8)
    assert res.embed_actors * res.embed_num_cpus + res.parse_num_cpus <= 2


@pytest.mark.parametrize("cpus", [1, 2, 3, 4, 8, 16, 64])
@pytest.mark.parametrize(("threads", "reserve"), [(1, 0), (2, 0), (4, 0), (1, 0.5), (2, 0.25)])
def test_the_embedding_pool_never_holds_every_cpu(cpus, threads, reserve):
    try:
        res = plan_resources(IngestConfig(embed_threads=threads, embed_num_cpus=reserve), cluster_cpus=cpus)
    except ValueError as exc:
        assert "would starve the parse tasks" in str(exc)
        return
    assert res.embed_actors * res.embed_num_cpus + res.parse_num_cpus <= cpus + 1e-9
    assert res.embed_actors * res.embed_threads <= max(cpus, threads)


def test_a_large_cluster_scales_the_pool_out():
    assert plan_resources(IngestConfig(), cluster_cpus=64).embed_actors == 64


def test_gpu_actors_ask_for_gpus_and_explain_when_there_are_none():
    res = plan_resources(IngestConfig(num_gpus=0.5), cluster_cpus=16, cluster_gpus=2)
    assert (res.embed_actors, res.num_gpus, res.device, res.encode_batch_size) == (4, 0.5, "cuda", 64)
    with pytest.raises(ValueError, match=r"num_gpus \(1.0\).*has 0 GPUs; set num_gpus=0"):
        plan_resources(IngestConfig(num_gpus=1), cluster_cpus=4)


def test_an_explicit_reservation_that_would_starve_parsing_is_refused():
    with pytest.raises(ValueError, match=r"embed_actors \(2\) x embed_num_cpus \(1.0\)"):
        plan_resources(IngestConfig(embed_actors=2, embed_num_cpus=1), cluster_cpus=2)


def test_config_errors_print_the_values():
    expected = r"new_after_n_chars \(900\) must be less than or equal to max_characters \(500\)"
    with pytest.raises(ValueError, match=expected):
        IngestConfig(max_characters=500, new_after_n_chars=900)
