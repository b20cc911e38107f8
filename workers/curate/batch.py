"""The curate stage for a batch of one ``curate`` job's items in three round trips, not three per item.

A brought dataset has no LLM latency to hide behind: its rows reach the stream as fast as they are read, so
the per-item round trips of ``CurateConsumer._curate`` (earlier decision, dedup script, decide script) are
what bounds throughput. Here the same steps run batch-wide, with the same scripts and the same guarantees:

1. one HMGET of the batch's earlier decisions (a redelivered entry is skipped, as in ``_curate``);
2. the quality checks, in stream order (the job's ``QualityFilter``, shared with ``_curate``);
3. one script running the dedup script's own Lua once per item that passed, in stream order: each item sees
   the items before it, so a duplicate within the batch is caught exactly as across batches;
4. one script running the decide-and-store Lua once per item (idempotent per index, as
   ``workers.curate.decide``), so "counted" still means "stored".
"""

import asyncio
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import numpy as np
import numpy.typing as npt
import orjson
from datasketch.hashfunc import sha1_hash32
from datasketch.minhash import _fmix
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from schemas.examples import GeneratedItem, QualityVerdict, Reason
from schemas.jobs import JobRecord
from schemas.llm import Usage
from store import keys
from workers.curate import semantic
from workers.curate.decide import _DECIDE_AND_STORE
from workers.curate.dedup import (
    _CHECK_AND_ADD,
    BAND_HASH_BYTES,
    _band_hashes,
    _decode,
    _permutations,
    band_params,
    exact_hash,
    shingles,
)
from workers.curate.quality import QualityFilter, quality_filter_for


class Curator(Protocol):
    """What a batch needs of the consumer that runs it (``workers.curate.consumer.CurateConsumer``; a Protocol
    so this module does not import the one that imports it)."""

    redis: Redis
    _filters: dict[str, QualityFilter]  # the job's filter, built once per job


# The per-item scripts, verbatim, as Lua functions of their own KEYS and ARGV, called once per item by a loop:
# one script call (and a handful of arguments per item) for the whole batch, the same logic item by item.
# KEYS: exact, sig, band 0 .. n-1.  ARGV: equal positions needed, then per item: id, exact hash, signature,
# the band hashes concatenated.  Returns one reply of the per-item script per item.
_CHECK_AND_ADD_MANY = f"""
local function one(KEYS, ARGV)
{_CHECK_AND_ADD}
end
local nbands, width, out = #KEYS - 2, {BAND_HASH_BYTES}, {{}}
for i = 2, #ARGV, 4 do
  local argv = {{ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[1]}}
  local bands = ARGV[i + 3]
  for b = 1, nbands do argv[4 + b] = string.sub(bands, (b - 1) * width + 1, b * width) end
  out[#out + 1] = one(KEYS, argv)
end
return out
"""
# KEYS: decisions, counters, accepted prefix, rejected prefix.  ARGV: target, bucket size, the accepted verdict,
# then per item: index, reason ('' = none), the example's JSON before its verdict, after it, its rejected verdict.
# The two forms of the example are joined here (head .. verdict .. tail), so the body is sent once, not twice.
# Returns each item's decision.
_DECIDE_AND_STORE_MANY = f"""
local function one(KEYS, ARGV)
{_DECIDE_AND_STORE}
end
local out, accepted = {{}}, ARGV[3]
for i = 4, #ARGV, 5 do
  local head, tail = ARGV[i + 2], ARGV[i + 3]
  out[#out + 1] = one(KEYS, {{ARGV[i], ARGV[i + 1], ARGV[1], ARGV[2], head .. accepted .. tail,
    head .. ARGV[i + 4] .. tail}})
end
return out
"""
SUB_BATCH = 64  # items per dedup / decide script call (a larger consumer read is split and overlapped)
_ZERO = Usage()
_ZERO_USAGE = _ZERO.model_dump(mode="json")
_ACCEPTED = orjson.dumps(QualityVerdict(accepted=True).model_dump(mode="json"))
_scripts: dict[int, tuple[AsyncScript, AsyncScript]] = {}  # per Redis client: (dedup, decide)


def batched(record: JobRecord) -> bool:
    """Jobs over rows at hand (``batched_curation``) take this path, unless semantic dedup (model inference per
    item) is on."""
    return record.spec.batched_curation and not record.spec.dedup.semantic


def _scripts_for(redis: Redis) -> tuple[AsyncScript, AsyncScript]:
    found = _scripts.get(id(redis))
    if found is None:
        found = (redis.register_script(_CHECK_AND_ADD_MANY), redis.register_script(_DECIDE_AND_STORE_MANY))
        _scripts[id(redis)] = found
    return found


_SHINGLE_HASHES: dict[str, int] = {}  # a memo of the vocabulary seen: shingle -> its mixed 32-bit hash
_MAX_HASH = np.uint32(0xFFFFFFFF)


def _signatures(texts: list[str], num_perm: int) -> list[bytes]:
    """``dedup._minhash(text, num_perm)`` of each text, packed big-endian as ``Deduper`` stores it: the same
    affine32 arithmetic (sha1_hash32, the MurmurHash3 finaliser, ``a * h + b`` wrapping at 2^32, the minimum per
    permutation) for the whole batch in one numpy pass instead of a MinHash object per text (tested equal)."""
    if len(_SHINGLE_HASHES) > 200_000:
        _SHINGLE_HASHES.clear()
    memo = _SHINGLE_HASHES
    hashes: list[int] = []
    starts: list[int] = []
    for text in texts:
        starts.append(len(hashes))
        for shingle in shingles(text):
            h = memo.get(shingle)
            if h is None:
                h = memo[shingle] = sha1_hash32(shingle.encode("utf-8"))
            hashes.append(h)
    a, b = _permutations(num_perm)
    empty = np.full(num_perm, _MAX_HASH, dtype=np.uint32).astype(">u4").tobytes()
    if not hashes:
        return [empty] * len(texts)
    hv = _fmix(np.array(hashes, dtype=np.uint32), 32).reshape(-1, 1)
    phv: npt.NDArray[np.uint32] = hv * a + b
    ends = [*starts[1:], len(hashes)]
    nonempty = [i for i, (lo, hi) in enumerate(zip(starts, ends, strict=True)) if hi > lo]
    mins = np.minimum.reduceat(phv, [starts[i] for i in nonempty], axis=0).astype(">u4")
    out = [empty] * len(texts)
    for row, i in enumerate(nonempty):
        out[i] = mins[row].tobytes()
    return out


def _request(item: GeneratedItem) -> str:
    """What dedup compares: the instruction plus its input (as ``CurateConsumer._curate`` does)."""
    return f"{item.instruction}\n{item.input}" if item.input else item.instruction


async def curate_batch(consumer: Curator, record: JobRecord, items: list[GeneratedItem]) -> None:
    redis, job_id = consumer.redis, record.id
    unique = list({item.index: item for item in reversed(items)}.values())[::-1]  # first delivery of an index
    earlier = await redis.hmget(keys.decisions(job_id), [str(item.index) for item in unique])
    todo = [item for item, prev in zip(unique, earlier, strict=True) if prev is None]
    if not todo:
        return
    if job_id not in consumer._filters:
        consumer._filters[job_id] = quality_filter_for(record, semantic.embedder())
    run = _Run(redis, record, consumer._filters[job_id])
    # Sub-batches overlap Redis and Python: while Redis runs one sub-batch's dedup script, the next one's quality
    # checks run here. Dedup scripts still go one after another, in stream order (each is sent only once the
    # one before it has answered), so the first of two duplicates is the one kept.
    inflight: _Sub | None = None
    decides: list[asyncio.Task[object]] = []
    try:
        for start in range(0, len(todo), SUB_BATCH):
            sub = run.prepare(todo[start : start + SUB_BATCH])
            if inflight is not None:
                decides.append(await run.finish(inflight))
            run.send_dedup(sub)
            inflight = sub
            await asyncio.sleep(0)  # let it go out before the next sub-batch's checks
        if inflight is not None:
            decides.append(await run.finish(inflight))
        await asyncio.gather(*decides)
    finally:
        pending = [t for t in decides if not t.done()]
        if inflight is not None and inflight.dedup is not None and not inflight.dedup.done():
            pending.append(inflight.dedup)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


@dataclass
class _Sub:
    items: list[GeneratedItem]
    verdicts: list[QualityVerdict]
    reasons: list[Reason | None]
    passed: list[int]
    args: list[str | bytes | int]
    duplicate_of: list[str | None] = field(default_factory=list)
    dedup: "asyncio.Task[object] | None" = None


class _Run:
    def __init__(self, redis: Redis, record: JobRecord, quality: QualityFilter) -> None:
        self.redis, self.job_id, self.quality = redis, record.id, quality
        self.spec = spec = record.spec
        self.dedup_script, self.decide_script = _scripts_for(redis)
        dedup = spec.dedup
        self.bands = self.rows = self.need = 0
        band_keys: list[str] = []
        if dedup.near:
            self.bands, self.rows = band_params(dedup.threshold, dedup.num_perm)
            band_keys = [f"{keys.lsh_prefix(self.job_id)}{b}" for b in range(self.bands)]
            self.need = math.ceil(dedup.threshold * dedup.num_perm - 1e-9)  # as ``Deduper.check_and_add``
        self.dedup_keys = [keys.exact(self.job_id), keys.signatures(self.job_id), *band_keys]
        self.decide_keys = [
            keys.decisions(self.job_id),
            keys.counters(self.job_id),
            keys.bucket_prefix(self.job_id, "accepted"),
            keys.bucket_prefix(self.job_id, "rejected"),
        ]
        self.created_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")

    def prepare(self, items: list[GeneratedItem]) -> _Sub:
        """Quality checks and dedup signatures (CPU only)."""
        verdicts = [self.quality.verdict(item) for item in items]
        reasons: list[Reason | None] = [v.reasons[0] if v.reasons else None for v in verdicts]
        dedup = self.spec.dedup
        passed = [i for i, reason in enumerate(reasons) if reason is None] if dedup.exact or dedup.near else []
        args: list[str | bytes | int] = [self.need]
        texts = [_request(items[i]) for i in passed]
        signatures = _signatures(texts, dedup.num_perm) if dedup.near else [b""] * len(texts)
        for i, text, packed in zip(passed, texts, signatures, strict=True):
            band_hashes = b"".join(_band_hashes(packed, self.bands, self.rows)) if dedup.near else b""
            args += [f"{self.job_id}-{items[i].index}", exact_hash(text) if dedup.exact else "", packed, band_hashes]
        return _Sub(items, verdicts, reasons, passed, args, [None] * len(items))

    def send_dedup(self, sub: _Sub) -> None:
        if sub.passed:
            sub.dedup = asyncio.ensure_future(self.dedup_script(keys=self.dedup_keys, args=sub.args, client=self.redis))

    async def finish(self, sub: _Sub) -> "asyncio.Task[object]":
        """Apply the sub-batch's dedup answer, then send its decide-and-store script (returned as a task)."""
        if sub.dedup is not None:
            replies = await sub.dedup
            assert isinstance(replies, list)
            for i, reply in zip(sub.passed, replies, strict=True):
                code = int(reply[0])
                other = _decode(reply[1]) if code else None
                if code and other != f"{self.job_id}-{sub.items[i].index}":
                    sub.reasons[i] = Reason.EXACT_DUPLICATE if code == 1 else Reason.NEAR_DUPLICATE
                    sub.duplicate_of[i] = other
        args: list[str | bytes | int] = [self.spec.count, keys.BUCKET_SIZE, _ACCEPTED]
        for item, verdict, reason, dup in zip(sub.items, sub.verdicts, sub.reasons, sub.duplicate_of, strict=True):
            # An Example in JSON (the fields and shapes ``Example.model_dump_json`` writes; tested), written with
            # orjson around its verdict: validating a pydantic model per row costs more than the rest. The bytes are
            # those of ``orjson.dumps`` of the whole record (keys in this order), in two pieces.
            head = {
                "id": f"{self.job_id}-{item.index}",
                "job_id": self.job_id,
                "index": item.index,
                "instruction": item.instruction,
                "input": item.input,
                "output": item.output,
                "skills": item.skills,
                "query_type": item.query_type,
                "model": item.model,
                "endpoint": item.endpoint,
                "recipe": item.recipe,
                "template_version": item.template_version,
                "usage": _ZERO_USAGE if item.usage == _ZERO else item.usage.model_dump(mode="json"),
            }
            tail = {  # after "verdict"
                "duplicate_of": dup,
                "conversation": [m.model_dump(mode="json") for m in item.conversation],
                "judge": None if item.judge is None else item.judge.model_dump(mode="json"),
                **item.extras,  # the recipe's own fields (a curated row's source_row)
                "created_at": self.created_at,
            }
            rejected_for = reason or Reason.SURPLUS
            reasons = [rejected_for, *(r for r in verdict.reasons if r != rejected_for)]
            rejected = {"accepted": False, "reasons": reasons, "detail": verdict.detail}
            args += [
                str(item.index),
                reason.value if reason else "",
                orjson.dumps(head)[:-1] + b',"verdict":',
                b"," + orjson.dumps(tail)[1:],
                orjson.dumps(rejected),
            ]
        return asyncio.ensure_future(self.decide_script(keys=self.decide_keys, args=args, client=self.redis))
