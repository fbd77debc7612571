"""IngestJobs: the detached actor that runs ingestion jobs, so a Gateway restart does not stop them.

The actor holds nothing a restart loses: every job is a row of the `ingest_jobs` table (written by
the Gateway before the actor hears of it). It runs whatever is queued, and on (re)start whatever
was running, which is safe because ingestion is idempotent: files already stored are skipped.
A job that keeps killing its worker is failed after `max_attempts` starts rather than retried forever.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import ray
from pydantic import BaseModel, Field

from memory.ingest.config import IngestConfig
from memory.jobs import IngestJob, JobStore, upload_dirs
from troupe.secrets import fingerprint
from troupe.settings import Settings
from troupe.tracing import setup_tracing, span

__all__ = ["IngestJobs", "IngestJobsConfig", "get_or_create_ingest_jobs", "ingest_jobs_name"]

log = logging.getLogger("troupe.ingest_jobs")


class IngestJobsConfig(BaseModel):
    """The `ingest_jobs` args of the troupe application (serve_config.yaml)."""

    max_running_jobs: int = Field(2, ge=1, description="Jobs run at once; jobs on one collection and scope "
                                                       "always run one after another.")
    max_attempts: int = Field(3, ge=1, description="Starts of one job (restarts included) before it is failed.")
    progress_period_s: float = Field(0.5, gt=0, description="How often a running job saves its counters.")
    poll_s: float = Field(5.0, gt=0, description="Queue scan period when nothing wakes the actor.")
    ingest: IngestConfig = Field(default_factory=IngestConfig, description="Settings of jobs that name none.")


def ingest_jobs_name(settings: Settings) -> str:
    return f"{settings.app_name}-ingest-jobs"


class IngestJobs:
    async def __init__(self, settings: Settings, config: IngestJobsConfig):
        self.settings, self.config = settings, config
        setup_tracing("troupe-ingest")
        self.jobs = JobStore(settings.db_url)
        await self.jobs.migrate()
        self.running: dict[str, asyncio.Task] = {}
        self.slots = asyncio.Semaphore(config.max_running_jobs)
        self.locks: dict[tuple[str, str, str], asyncio.Lock] = {}
        self.wake = asyncio.Event()
        self._store: Any = None
        self._store_lock = asyncio.Lock()
        self.loop = asyncio.get_running_loop().create_task(self._loop())

    # -- called by the Gateway ------------------------------------------------------------

    async def ping(self) -> dict[str, Any]:
        return {"store": fingerprint(self.settings.db_url), "running": sorted(self.running)}

    async def kick(self) -> None:
        """A job was queued: start it now rather than at the next poll."""
        self.wake.set()

    # -- the queue ------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            try:
                for job in await self.jobs.unfinished():
                    if job.job_id not in self.running:
                        self.running[job.job_id] = asyncio.create_task(self._run(job))
            except Exception:
                log.exception("scanning the ingest queue failed; retrying")
            try:
                await asyncio.wait_for(self.wake.wait(), self.config.poll_s)
            except asyncio.TimeoutError:
                pass
            self.wake.clear()

    async def _semantic_store(self) -> Any:
        async with self._store_lock:
            if self._store is None:
                from memory.semantic import QdrantSettings, SemanticStore

                settings = QdrantSettings.for_app(self.settings.home)
                self._store = await asyncio.to_thread(SemanticStore, settings)
            return self._store

    async def _run(self, job: IngestJob) -> None:
        ended = False
        try:
            # Two runs over one collection and scope would plan against the same stored state.
            key = (job.tenant, job.collection, job.scope.key)
            async with self.slots, self.locks.setdefault(key, asyncio.Lock()):
                attempt = await self.jobs.start(job.job_id)
                if attempt is None:
                    return  # ended while it waited
                if attempt > self.config.max_attempts:
                    await self.jobs.finish(job.job_id, error=(
                        f"the ingestion worker stopped {attempt - 1} times while running this job (out of memory?); "
                        "ingest fewer files at a time, or give the workers more memory"))
                    ended = True
                    return
                log.info("ingest job %s: attempt %d, %d sources into %s", job.job_id, attempt, len(job.sources),
                         job.collection)
                if job.source_root:
                    await asyncio.to_thread(self._place_upload, job)
                # A job is a trace of its own (no task asked for it): ingest and its stages nest under it.
                with span("ingest.job", **{"troupe.ingest.job_id": job.job_id, "troupe.tenant": job.tenant,
                                           "troupe.ingest.collection": job.collection, "troupe.ingest.attempt": attempt,
                                           "troupe.ingest.sources": len(job.sources)}):
                    ended = await self._ingest(job)
                if ended and job.source_root:
                    await asyncio.to_thread(shutil.rmtree, job.source_root, True)
        except Exception:
            log.exception("ingest job %s: bookkeeping failed; it runs again at the next scan", job.job_id)
        finally:
            self.running.pop(job.job_id, None)

    def _place_upload(self, job: IngestJob) -> None:
        """Move an upload from its job's folder to where its collection's uploads are ingested from
        (a re-run after a restart finds it there already)."""
        staging, _ = upload_dirs(self.settings.home, job.tenant, job.collection, job.scope, job.job_id)
        if staging.exists():
            target = Path(job.source_root or "")
            shutil.rmtree(target, ignore_errors=True)  # left by a job that died before cleaning up
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging, target)

    async def _ingest(self, job: IngestJob) -> bool:
        """Run one job to its end; False when it was requeued (a transient cluster failure)."""
        from memory.ingest import IngestError

        loop = asyncio.get_running_loop()
        latest: list[Any] = []
        changed = asyncio.Event()

        def on_progress(progress: Any) -> None:  # called in the ingest thread
            def note() -> None:
                latest[:] = [progress]
                changed.set()

            loop.call_soon_threadsafe(note)

        async def save() -> None:
            while True:
                await changed.wait()
                changed.clear()
                await self.jobs.save_progress(job.job_id, latest[0])
                await asyncio.sleep(self.config.progress_period_s)

        saver = asyncio.create_task(save())
        try:
            store = await self._semantic_store()
            report = await store.ingest(job.sources, collection=job.collection, tenant=job.tenant, scope=job.scope,
                                        config=IngestConfig.model_validate(job.config), on_progress=on_progress)
        except (IngestError, ValueError) as exc:  # a bad path, or settings the cluster cannot honour
            await self._stop_saver(saver)
            await self.jobs.finish(job.job_id, error=str(exc))
            return True
        except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError, ray.exceptions.RaySystemError) as exc:
            # The store's owner or a worker died: the cluster heals, and the job runs again.
            await self._stop_saver(saver)
            log.warning("ingest job %s: %s; requeued", job.job_id, type(exc).__name__)
            await self.jobs.requeue(job.job_id, f"interrupted ({type(exc).__name__}); running again")
            self._store = None
            await asyncio.sleep(1.0)
            self.wake.set()
            return False
        except Exception as exc:
            await self._stop_saver(saver)
            log.exception("ingest job %s failed", job.job_id)
            await self.jobs.finish(job.job_id, error=f"{type(exc).__name__}: {exc}"[:2000])
            return True
        await self._stop_saver(saver)
        await self.jobs.finish(job.job_id, report=report)
        log.info("ingest job %s done: %d files, %d chunks stored, %d failed", job.job_id, len(report.files),
                 report.progress.chunks_stored, len(report.failures))
        return True

    @staticmethod
    async def _stop_saver(saver: asyncio.Task) -> None:
        saver.cancel()
        try:
            await saver
        except (asyncio.CancelledError, Exception):
            pass


IngestJobsActor = ray.remote(IngestJobs)


async def get_or_create_ingest_jobs(settings: Settings, config: IngestJobsConfig) -> Any:
    """The app's one IngestJobs actor, started if missing, replaced if set up for another store."""
    opts = dict(name=ingest_jobs_name(settings), namespace=settings.namespace, lifetime="detached",
                get_if_exists=True, max_restarts=-1, max_concurrency=1000, num_cpus=0)
    for _ in range(50):
        actor = IngestJobsActor.options(**opts).remote(settings, config)
        info = await actor.ping.remote()
        if info["store"] == fingerprint(settings.db_url):
            return actor
        ray.kill(actor, no_restart=True)  # left from a deployment on another store
        await asyncio.sleep(0.2)
    raise RuntimeError(f"could not replace the ingest jobs actor named {ingest_jobs_name(settings)!r}")
