"""One named, detached, self-restarting actor per app, tied to the app's store."""

from __future__ import annotations

import asyncio
from typing import Any

import ray

from troupe.secrets import fingerprint
from troupe.settings import Settings

__all__ = ["get_or_create_detached"]


async def get_or_create_detached(actor_cls: Any, name: str, settings: Settings, *args: Any) -> Any:
    """The actor named `name`, started if missing, replaced if it was set up for another store
    (its `ping()` returns {"store": fingerprint(db_url)})."""
    for _ in range(50):
        actor = actor_cls.options(name=name, namespace=settings.namespace, lifetime="detached", get_if_exists=True,
                                  max_restarts=-1, max_concurrency=100, num_cpus=0).remote(settings, *args)
        if (await actor.ping.remote())["store"] == fingerprint(settings.db_url):
            return actor
        ray.kill(actor, no_restart=True)
        await asyncio.sleep(0.2)
    raise RuntimeError(f"could not replace the actor named {name!r}")
