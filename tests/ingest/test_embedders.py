"""The long-lived embedding actors: shared by runs with the same settings, gone when idle."""

from __future__ import annotations

import time

import pytest

from actors.qdrant_owner import NAMESPACE
from memory.ingest import FileStatus, ingest
from tests.ingest.corpus import small_config, write_doc

pytestmark = pytest.mark.ray


def _embedders(ray) -> set[str]:
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == NAMESPACE and a["name"].startswith("troupe-embedder-")}


def test_runs_share_warm_actors_which_exit_when_idle(ray_cluster, qdrant_settings, tmp_path):
    # Its own forward-batch size gives this test its own pool, with a short idle timeout.
    config = small_config(encode_batch_size=4, embed_idle_timeout_s=2)
    before = _embedders(ray_cluster)
    first = write_doc(tmp_path / "a" / "one.txt", [("Grant Review", "The annual grant review approved the fund. " * 5)])
    second = write_doc(tmp_path / "b" / "two.txt", [("Tender Notes", "The local tender missed the target again. " * 5)])

    report = ingest(first, collection="warm", settings=qdrant_settings, config=config)
    started = time.monotonic()
    report_2 = ingest(second, collection="warm", settings=qdrant_settings, config=config)
    warm_s = time.monotonic() - started

    assert report.count(FileStatus.stored) == report_2.count(FileStatus.stored) == 1
    ours = _embedders(ray_cluster) - before
    assert len(ours) == 1  # the second run found the first run's actor
    assert warm_s < 5, f"a warm one-file ingest took {warm_s:.1f}s"
    deadline = time.monotonic() + 30
    while ours & _embedders(ray_cluster) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ours & _embedders(ray_cluster), "the idle embedding actor did not exit"
