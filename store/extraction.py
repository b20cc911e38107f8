"""Where an extraction job keeps its intermediate state: Redis, under the job's own keys, never in Python.

The key layout is in ``store.keys`` (``X = job:{id}:x``). Every per-row write is a Lua script that sets the row
only if unset and counts only then, so a step redone after a crash neither double counts nor reports a row twice.
"""

from collections import defaultdict
from collections.abc import AsyncIterator, Iterable

from redis.asyncio import Redis

from schemas.extract import MAX_EXEMPLARS, UnlabelledRow
from store import keys

_LABEL = """
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    n = n + 1
    redis.call('HINCRBY', KEYS[3], ARGV[i + 1], 1)
    redis.call('ZADD', KEYS[4], 0, ARGV[i + 1])
  end
end
if n > 0 then redis.call('HINCRBY', KEYS[2], 'processed', n) end
return n
"""

_MAP = """
local n = 0
for i = 3, #ARGV, 3 do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    n = n + 1
    redis.call('HINCRBY', KEYS[3], ARGV[i + 1], 1)
    local ex = ARGV[1] .. ARGV[i + 1]
    redis.call('ZADD', ex, tonumber(ARGV[i]), ARGV[i + 2])
    redis.call('ZREMRANGEBYRANK', ex, tonumber(ARGV[2]), -1)
  end
end
if n > 0 then redis.call('HINCRBY', KEYS[2], 'accepted', n) end
return n
"""

_REPORT = """
local n = 0
for i = 4, #ARGV, 3 do
  if redis.call('HSETNX', KEYS[1], ARGV[i], '') == 1 then
    n = n + 1
    local seq = redis.call('HINCRBY', KEYS[2], 'rejected', 1) - 1
    redis.call('HINCRBY', KEYS[2], 'rejected:' .. ARGV[i + 1], 1)
    redis.call('HSET', ARGV[1] .. math.floor(seq / tonumber(ARGV[2])), seq, ARGV[i + 2])
  end
end
if n > 0 and ARGV[3] == '1' then redis.call('HINCRBY', KEYS[2], 'processed', n) end
return n
"""

_MERGE = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end
for i = 2, #ARGV, 2 do
  redis.call('ZADD', KEYS[2], 0, ARGV[i])
  redis.call('HINCRBY', KEYS[3], ARGV[i], tonumber(ARGV[i + 1]))
end
return 1
"""


class ExtractStore:
    """Typed access to one job's extraction keys."""

    def __init__(self, redis: Redis, job_id: str) -> None:
        self.redis, self.job_id = redis, job_id
        self.counters = keys.counters(job_id)

    def _bucket(self, kind: str, row: int) -> str:
        return keys.extract_bucket(self.job_id, kind, row)

    def level(self, r: int) -> str:
        return keys.extract_level(self.job_id, r)

    def weight(self, r: int) -> str:
        return keys.extract_weight(self.job_id, r)

    def done(self, r: int) -> str:
        return keys.extract_done(self.job_id, r)

    @property
    def state_key(self) -> str:
        return keys.extract_state(self.job_id)

    # --- job state ------------------------------------------------------------------------------

    async def state(self) -> dict[str, str]:
        raw = await self.redis.hgetall(self.state_key)
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def set_state(self, **fields: str | int) -> None:
        await self.redis.hset(self.state_key, mapping={k: str(v) for k, v in fields.items()})

    async def add_note(self, note: str) -> None:
        await self.redis.sadd(keys.extract_notes(self.job_id), note)

    async def notes(self) -> list[str]:
        return sorted(n.decode() for n in await self.redis.smembers(keys.extract_notes(self.job_id)))

    async def count(self, name: str, value: int = 1) -> None:
        await self.redis.hincrby(self.counters, name, value)

    # --- rows -----------------------------------------------------------------------------------

    async def row_values(self, kind: str, rows: list[int]) -> list[str | None]:
        """The stored value per row (None = not yet), for ``kind`` "fine" or "map"."""
        by_bucket: dict[str, list[int]] = defaultdict(list)
        for row in rows:
            by_bucket[self._bucket(kind, row)].append(row)
        found: dict[int, str | None] = {}
        for bucket, members in by_bucket.items():
            values = await self.redis.hmget(bucket, [str(r) for r in members])
            found.update({r: None if v is None else v.decode() for r, v in zip(members, values, strict=True)})
        return [found[r] for r in rows]

    async def record_labels(self, labels: Iterable[tuple[int, str]]) -> int:
        done = 0
        grouped: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for row, label in labels:
            grouped[self._bucket("fine", row)].append((row, label))
        for bucket, pairs in grouped.items():
            args = [x for row, label in pairs for x in (row, label)]
            done += int(await self.redis.eval(_LABEL, 4, bucket, self.counters, self.weight(0), self.level(0), *args))
        return done

    async def record_mapped(self, mapped: Iterable[tuple[int, str, str]]) -> int:
        """(row, coarse skill, exemplar text) triples."""
        done = 0
        grouped: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
        for row, skill, text in mapped:
            grouped[self._bucket("map", row)].append((row, skill, text))
        freq, exemplars = keys.extract_freq(self.job_id), keys.extract_exemplars_prefix(self.job_id)
        for bucket, triples in grouped.items():
            args = [x for triple in triples for x in triple]
            done += int(await self.redis.eval(_MAP, 3, bucket, self.counters, freq, exemplars, MAX_EXEMPLARS, *args))
        return done

    async def report(self, kind: str, unlabelled: Iterable[UnlabelledRow]) -> int:
        """Report rows as unlabelled (phase ``kind``: "fine" = label phase, "map" = map phase)."""
        done = 0
        grouped: dict[str, list[UnlabelledRow]] = defaultdict(list)
        for entry in unlabelled:
            grouped[self._bucket(kind, entry.row)].append(entry)
        for bucket, entries in grouped.items():
            args = [x for e in entries for x in (e.row, e.reason, e.model_dump_json())]
            prefix = keys.extract_unlabelled_prefix(self.job_id)
            processed = "1" if kind == "fine" else "0"
            done += int(
                await self.redis.eval(_REPORT, 2, bucket, self.counters, prefix, keys.BUCKET_SIZE, processed, *args)
            )
        return done

    async def iter_unlabelled(self) -> AsyncIterator[bytes]:
        total = int(await self.redis.hget(self.counters, "rejected") or 0)
        for b in range((total + keys.BUCKET_SIZE - 1) // keys.BUCKET_SIZE):
            bucket = await self.redis.hgetall(keys.extract_unlabelled_prefix(self.job_id) + str(b))
            for seq in sorted(bucket, key=int):
                yield bucket[seq]

    # --- merge ----------------------------------------------------------------------------------

    async def level_size(self, r: int) -> int:
        return int(await self.redis.zcard(self.level(r)))

    async def level_batch(self, r: int, start: int, stop: int) -> list[tuple[str, int]]:
        """Labels ``[start, stop)`` of round r in name order, with their row weights."""
        names = [n.decode() for n in await self.redis.zrange(self.level(r), start, stop - 1)]
        weights = await self.redis.hmget(self.weight(r), names) if names else []
        return [(n, int(w or 0)) for n, w in zip(names, weights, strict=True)]

    async def batches_done(self, r: int) -> set[int]:
        return {int(b) for b in await self.redis.smembers(self.done(r))}

    async def apply_merge(self, r: int, batch: int, next_labels: dict[str, int]) -> bool:
        """Write one batch's outcome into round r+1, once (a redone batch is ignored)."""
        args = [x for name, weight in next_labels.items() for x in (name, weight)]
        applied = await self.redis.eval(_MERGE, 3, self.done(r), self.level(r + 1), self.weight(r + 1), batch, *args)
        return bool(applied)

    # --- results --------------------------------------------------------------------------------

    async def set_coarse(self, body: bytes) -> None:
        await self.redis.set(keys.extract_coarse(self.job_id), body, nx=True)

    async def coarse(self) -> bytes | None:
        raw: bytes | None = await self.redis.get(keys.extract_coarse(self.job_id))
        return raw

    async def frequencies(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in (await self.redis.hgetall(keys.extract_freq(self.job_id))).items()}

    async def exemplars(self, skill: str) -> list[str]:
        key = keys.extract_exemplars_prefix(self.job_id) + skill
        return [e.decode() for e in await self.redis.zrange(key, 0, MAX_EXEMPLARS - 1)]

    async def agnostic_get(self, field: str) -> bytes | None:
        raw: bytes | None = await self.redis.hget(keys.extract_agnostic(self.job_id), field)
        return raw

    async def agnostic_put(self, field: str, body: bytes) -> bool:
        """True the first time a step's answer is stored (so its progress is counted once)."""
        return bool(await self.redis.hsetnx(keys.extract_agnostic(self.job_id), field, body))
