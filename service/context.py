"""What the API's routes share: settings, job store, storage, the Celery producer, the API keys and the bundles.

Nothing here connects at construction (the OpenAPI export builds the app without Redis); the Redis client and
the Celery producer connect on first use and reconnect by themselves after Redis restarts.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import anyio
import redis
from celery import Celery

from model_export.card import ModelBundleError, read_card

from .intake_pool import IntakePool
from .metrics import make_registry
from .queue import make_celery
from .security import ApiKeys
from .settings import Settings
from .storage import JobStorage
from .store import JobStore


@dataclass(frozen=True)
class BundleInfo:
    name: str
    path: Path
    model: dict
    atlas: dict


class ServiceContext:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.storage = JobStorage(settings.jobs_dir)
        self._bundles: dict[str, BundleInfo] = {}

    @cached_property
    def store(self) -> JobStore:
        return JobStore.from_url(self.settings.redis_url, self.settings.key_prefix)

    @cached_property
    def probe(self) -> JobStore:
        """A store whose client answers at once when Redis is down (readiness), instead of retrying for a minute."""
        client = redis.Redis.from_url(self.settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
        return JobStore(client, self.settings.key_prefix)

    @cached_property
    def celery(self) -> Celery:
        return make_celery(self.settings)

    @cached_property
    def api_keys(self) -> ApiKeys:
        return ApiKeys.from_settings(self.settings.api_keys, self.settings.api_keys_file)

    @cached_property
    def intake_limiter(self) -> anyio.CapacityLimiter:
        """The threads an upload's unpacking runs on (first used inside a request: anyio makes a limiter for the
        running event loop). Forty unpackings and checks at once on the default thread pool starved the status
        polls (max 1.5-1.9 s); the checks now run in processes of their own (``intake_pool``)."""
        return anyio.CapacityLimiter(self.settings.intake_threads)

    @cached_property
    def intake_pool(self) -> IntakePool:
        """The processes the uploads' DICOM checks run in (``service.intake_pool``)."""
        return IntakePool(self.settings.intake_processes)

    @cached_property
    def metrics(self):
        return make_registry(self.store, self.settings.queue)

    def bundle(self, name: str) -> BundleInfo | None:
        """The bundle's card facts (read once; the worker loads the model itself)."""
        if name in self._bundles:
            return self._bundles[name]
        path = self.settings.bundle_dirs().get(name)
        if path is None:
            return None
        try:
            card = read_card(path)
        except ModelBundleError:
            return None
        info = BundleInfo(
            name,
            path,
            {"name": str(card.get("name", name)), "version": str(card.get("version", "unknown"))},
            {
                "name": str(card["atlas"].get("name") or "atlas"),
                "sha256": str(card["atlas"]["sha256"]),
                "oars": len(card.get("oars") or card["atlas"].get("oars") or []),
            },
        )
        self._bundles[name] = info
        return info
