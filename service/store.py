"""The job store in Redis: job documents, their indexes, worker heartbeats, idempotency keys and stage metrics.

A job is a Redis hash ``<prefix>:job:<id>``; ``id``, ``owner``, ``status``, ``worker`` and ``idempotency_key`` are
plain strings (the Lua scripts read them), every other field is JSON. Status changes go through one Lua script that
checks the current status (and optionally another field, e.g. that the worker changing it is the one holding the job)
and moves the id between the index sets in the same step, so two workers, a sweeper and a DELETE can never
interleave into an impossible state (a cancelled job marked succeeded, a job claimed twice).

Indexes (sorted sets of job ids): ``jobs:<owner>`` (score: creation time), ``jobs:<owner>:<status>`` (creation
time) and ``status:<status>`` (time the status was entered: the sweeper and /metrics read them).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running")
FINAL = ("succeeded", "failed", "cancelled")
PLAIN_FIELDS = ("id", "owner", "status", "worker", "idempotency_key")
STAGE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)

_TRANSITION = """
local key = KEYS[1]
local prefix = ARGV[1]
if redis.call('EXISTS', key) == 0 then return {0, ''} end
local status = redis.call('HGET', key, 'status')
if ARGV[2] ~= '*' then
  local allowed = false
  for s in string.gmatch(ARGV[2], '%S+') do
    if s == status then allowed = true end
  end
  if not allowed then return {-1, status} end
end
if ARGV[3] ~= '' then
  local value = redis.call('HGET', key, ARGV[3]) or ''
  if value ~= ARGV[4] then return {-2, status} end
end
for i = 7, #ARGV, 2 do
  redis.call('HSET', key, ARGV[i], ARGV[i + 1])
end
local new = ARGV[5]
if new ~= '' and new ~= status then
  local owner = redis.call('HGET', key, 'owner')
  local id = redis.call('HGET', key, 'id')
  redis.call('HSET', key, 'status', new)
  redis.call('ZREM', prefix .. ':status:' .. status, id)
  redis.call('ZADD', prefix .. ':status:' .. new, ARGV[6], id)
  local created = redis.call('ZSCORE', prefix .. ':jobs:' .. owner, id) or ARGV[6]
  redis.call('ZREM', prefix .. ':jobs:' .. owner .. ':' .. status, id)
  redis.call('ZADD', prefix .. ':jobs:' .. owner .. ':' .. new, created, id)
  return {1, new}
end
return {1, status}
"""

_PURGE = """
local key = KEYS[1]
local prefix = ARGV[1]
if redis.call('EXISTS', key) == 0 then return 0 end
local owner = redis.call('HGET', key, 'owner')
local status = redis.call('HGET', key, 'status')
local id = redis.call('HGET', key, 'id')
local idem = redis.call('HGET', key, 'idempotency_key')
redis.call('DEL', key)
redis.call('ZREM', prefix .. ':status:' .. status, id)
redis.call('ZREM', prefix .. ':jobs:' .. owner, id)
redis.call('ZREM', prefix .. ':jobs:' .. owner .. ':' .. status, id)
if idem and idem ~= '' then
  local ikey = prefix .. ':idem:' .. idem
  if redis.call('GET', ikey) == id then redis.call('DEL', ikey) end
end
return 1
"""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _encode(fields: Mapping[str, Any]) -> dict[str, str]:
    return {k: (("" if v is None else str(v)) if k in PLAIN_FIELDS else json.dumps(v)) for k, v in fields.items()}


def _decode(raw: Mapping[bytes | str, bytes | str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        k = key.decode() if isinstance(key, bytes) else key
        v = value.decode() if isinstance(value, bytes) else value
        out[k] = v if k in PLAIN_FIELDS else json.loads(v)
    return out


class JobStore:
    def __init__(self, client: redis.Redis, prefix: str = "oarmorph") -> None:
        self.redis = client
        self.prefix = prefix
        self._transition = client.register_script(_TRANSITION)
        self._purge = client.register_script(_PURGE)

    @classmethod
    def from_url(cls, url: str, prefix: str = "oarmorph", retry_s: float = 60.0) -> JobStore:
        """A client that rides out a Redis restart: each command retried with backoff for about ``retry_s``."""
        retries = max(int(retry_s / 2.0), 1)
        client = redis.Redis.from_url(
            url,
            socket_timeout=10,
            socket_connect_timeout=5,
            health_check_interval=15,
            retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), retries),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError],
        )
        return cls(client, prefix)

    # --- keys --------------------------------------------------------------------------------------------------

    def _job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def _status(self, status: str) -> str:
        return f"{self.prefix}:status:{status}"

    def _owner(self, owner: str, status: str | None = None) -> str:
        return f"{self.prefix}:jobs:{owner}" + (f":{status}" if status else "")

    # --- jobs --------------------------------------------------------------------------------------------------

    def create(self, doc: Mapping[str, Any]) -> None:
        job_id, owner, status = doc["id"], doc["owner"], doc["status"]
        score = time.time()
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._job(job_id), mapping=_encode(doc))
            pipe.zadd(self._owner(owner), {job_id: score})
            pipe.zadd(self._owner(owner, status), {job_id: score})
            pipe.zadd(self._status(status), {job_id: score})
            pipe.execute()

    def get(self, job_id: str) -> dict[str, Any] | None:
        raw = self.redis.hgetall(self._job(job_id))
        return _decode(raw) if raw else None

    def field(self, job_id: str, name: str) -> Any:
        value = self.redis.hget(self._job(job_id), name)
        if value is None:
            return None
        text = value.decode()
        return text if name in PLAIN_FIELDS else json.loads(text)

    def update(
        self,
        job_id: str,
        fields: Mapping[str, Any] | None = None,
        *,
        allowed: Iterable[str] | None = None,
        guard: tuple[str, str] | None = None,
        status: str | None = None,
    ) -> tuple[bool, str]:
        """Set ``fields`` (and ``status``) if the job's status is in ``allowed`` and ``guard`` (field, plain value)
        holds. Returns (done, the status now); ``updated_at`` is always set."""
        payload = _encode({**(fields or {}), "updated_at": now_iso()})
        args: list[str | float] = [
            self.prefix,
            "*" if allowed is None else " ".join(allowed),
            guard[0] if guard else "",
            guard[1] if guard else "",
            status or "",
            time.time(),
        ]
        for k, v in payload.items():
            args += [k, v]
        result, now = self._transition(keys=[self._job(job_id)], args=args)
        now = now.decode() if isinstance(now, bytes) else now
        return int(result) == 1, now

    def purge(self, job_id: str) -> bool:
        return bool(self._purge(keys=[self._job(job_id)], args=[self.prefix]))

    def list(self, owner: str, status: str | None, offset: int, count: int) -> tuple[int, list[dict[str, Any]]]:
        key = self._owner(owner, status)
        total = int(self.redis.zcard(key))
        ids = [i.decode() for i in self.redis.zrevrange(key, offset, offset + count - 1)]
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(self._job(job_id))
            raws = pipe.execute()
        return total, [_decode(raw) for raw in raws if raw]

    def ids_with_status(self, status: str, older_than: float | None = None) -> list[str]:
        high = "+inf" if older_than is None else older_than
        return [i.decode() for i in self.redis.zrangebyscore(self._status(status), "-inf", high)]

    def touch_status(self, job_id: str, status: str) -> None:
        """Restart the clock of the job's status (the sweeper does not re-send it again at once)."""
        self.redis.zadd(self._status(status), {job_id: time.time()}, xx=True)

    def counts(self) -> dict[str, int]:
        with self.redis.pipeline(transaction=False) as pipe:
            for status in STATUSES:
                pipe.zcard(self._status(status))
            return dict(zip(STATUSES, (int(n) for n in pipe.execute()), strict=True))

    # --- idempotency -------------------------------------------------------------------------------------------

    def claim_idempotency(self, key: str, job_id: str) -> str | None:
        """Record ``job_id`` for ``key`` unless another job holds it: None, or the other job's id."""
        name = f"{self.prefix}:idem:{key}"
        for _ in range(3):
            if self.redis.set(name, job_id, nx=True):
                return None
            other = self.redis.get(name)
            if other is None:
                continue  # released in between
            other_id = other.decode()
            doc = self.get(other_id)
            if doc is not None and doc["status"] in ("queued", "running", "succeeded"):
                return other_id
            # the holder failed, was cancelled or purged: a new submission replaces it
            with self.redis.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(name)
                    if pipe.get(name) != other:
                        continue
                    pipe.multi()
                    pipe.set(name, job_id)
                    pipe.execute()
                    return None
                except redis.WatchError:
                    continue
        raise RuntimeError("idempotency key contended")

    def release_idempotency(self, key: str, job_id: str) -> None:
        name = f"{self.prefix}:idem:{key}"
        if self.redis.get(name) == job_id.encode():
            self.redis.delete(name)

    # --- workers -----------------------------------------------------------------------------------------------

    def heartbeat(self, worker_id: str, info: Mapping[str, Any], ttl_s: int) -> None:
        self.redis.set(f"{self.prefix}:worker:{worker_id}", json.dumps(dict(info)), ex=max(int(ttl_s), 1))

    def forget_worker(self, worker_id: str) -> None:
        self.redis.delete(f"{self.prefix}:worker:{worker_id}")

    def worker(self, worker_id: str) -> dict[str, Any] | None:
        if not worker_id:
            return None
        raw = self.redis.get(f"{self.prefix}:worker:{worker_id}")
        return json.loads(raw) if raw else None

    def workers(self) -> list[dict[str, Any]]:
        keys = list(self.redis.scan_iter(match=f"{self.prefix}:worker:*", count=200))
        if not keys:
            return []
        return [json.loads(v) for v in self.redis.mget(keys) if v]

    # --- metrics -----------------------------------------------------------------------------------------------

    def observe_stages(self, seconds: Mapping[str, float]) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            for stage, value in seconds.items():
                key = f"{self.prefix}:metrics:stage:{stage}"
                bucket = next((str(b) for b in STAGE_BUCKETS if value <= b), "+Inf")
                pipe.hincrby(key, bucket, 1)
                pipe.hincrbyfloat(key, "sum", float(value))
                pipe.hincrby(key, "count", 1)
                pipe.sadd(f"{self.prefix}:metrics:stages", stage)
            pipe.execute()

    def count_finished(self, status: str) -> None:
        self.redis.hincrby(f"{self.prefix}:metrics:finished", status, 1)

    def stage_histograms(self) -> dict[str, dict[str, float]]:
        stages = sorted(s.decode() for s in self.redis.smembers(f"{self.prefix}:metrics:stages"))
        out = {}
        for stage in stages:
            raw = self.redis.hgetall(f"{self.prefix}:metrics:stage:{stage}")
            out[stage] = {k.decode(): float(v) for k, v in raw.items()}
        return out

    def finished_counts(self) -> dict[str, int]:
        raw = self.redis.hgetall(f"{self.prefix}:metrics:finished")
        return {k.decode(): int(v) for k, v in raw.items()}
