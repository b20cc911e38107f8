"""Exact and near-duplicate detection shared by every curate worker of a job, kept in Redis.

Exact duplicates are caught by a hash of the normalised text; near duplicates by MinHash over the
normalised word set (2 changed words in 40 stay at Jaccard ~0.9, reliably caught), bucketed with LSH
bands and *verified* against the stored signature of the candidate. The lookup and the insert run
in one Lua script, so two workers curating the same text at the same moment cannot both keep it.

Per job (key names from ``store.keys``):
  exact     hash  normalised-text hash -> example id (first writer wins, HSETNX)
  lsh:{b}   hash  8-byte hash of band b of the signature -> example id (first writer wins)
  sig       hash  example id -> signature, ``num_perm`` big-endian uint32 values
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from datasketch import MinHash
from datasketch.lsh import _optimal_param
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from schemas.curation import DedupSettings
from schemas.examples import Reason
from store import keys
from workers.curate.quality import normalise_text

SHINGLE_SIZE = 1
# Fixed seed and scheme: every worker (and every restart) must compute the same signature for a text.
MINHASH_SEED = 1
MINHASH_SCHEME = "affine32"
VALUE_BYTES = 4  # affine32 hash values fit in a uint32
BAND_HASH_BYTES = 8
# Every LSH candidate is verified against its stored signature, so a false positive of the banding
# costs only a few extra reads while a false negative is a missed duplicate: weigh misses heavier than
# datasketch's 0.5 / 0.5 default (0.7 / 128 gives 18 bands x 7 rows instead of 14 x 9).
FALSE_POSITIVE_WEIGHT = 0.2
FALSE_NEGATIVE_WEIGHT = 0.8

# KEYS: exact, sig, band 0 .. band n-1
# ARGV: example id, exact hash ('' = exact off), signature ('' = near off), equal positions needed,
#       band hash 0 .. band hash n-1
# Returns {0} for new, {1, id} for an exact duplicate of id, {2, id} for a near duplicate of id.
# A hit on the example's own id counts as new, so re-curating an item after a crash is idempotent.
_CHECK_AND_ADD = """
local id, xh, sig = ARGV[1], ARGV[2], ARGV[3]
local need = tonumber(ARGV[4])
local nbands = #KEYS - 2
if xh ~= '' then
  local other = redis.call('HGET', KEYS[1], xh)
  if other and other ~= id then return {1, other} end
end
if sig ~= '' then
  local width = 4
  local total = #sig / width
  local seen = {}
  for i = 1, nbands do
    local cand = redis.call('HGET', KEYS[i + 2], ARGV[i + 4])
    if cand and cand ~= id and not seen[cand] then
      seen[cand] = true
      local other = redis.call('HGET', KEYS[2], cand)
      if other and #other == #sig then
        local same, left = 0, total
        for p = 1, #sig, width do
          if same >= need or same + left < need then break end
          if string.sub(sig, p, p + width - 1) == string.sub(other, p, p + width - 1) then
            same = same + 1
          end
          left = left - 1
        end
        if same >= need then return {2, cand} end
      end
    end
  end
end
if xh ~= '' then redis.call('HSETNX', KEYS[1], xh, id) end
if sig ~= '' then
  for i = 1, nbands do redis.call('HSETNX', KEYS[i + 2], ARGV[i + 4], id) end
  redis.call('HSET', KEYS[2], id, sig)
end
return {0}
"""


@dataclass(frozen=True, slots=True)
class DedupResult:
    """``reason`` is None for a new text; otherwise ``duplicate_of`` names the example kept first."""

    reason: Reason | None = None
    duplicate_of: str | None = None

    @property
    def is_duplicate(self) -> bool:
        return self.reason is not None


def shingles(text: str) -> set[str]:
    """Word shingles of the normalised text (SHINGLE_SIZE words each; single words now)."""
    words = normalise_text(text).split()
    if len(words) < SHINGLE_SIZE:
        return set(words)
    return {" ".join(words[i : i + SHINGLE_SIZE]) for i in range(len(words) - SHINGLE_SIZE + 1)}


def jaccard(a: str, b: str) -> float:
    """Exact Jaccard similarity of the normalised word sets (a reference for tests and tuning)."""
    sa, sb = set(normalise_text(a).split()), set(normalise_text(b).split())
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)


def shingle_jaccard(a: str, b: str) -> float:
    """Exact Jaccard similarity of the shingle sets: the quantity the MinHash signature estimates."""
    sa, sb = shingles(a), shingles(b)
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)


@lru_cache(maxsize=8)
def _permutations(num_perm: int) -> npt.NDArray[np.uint32]:
    """Building the permutations costs more than hashing a short text, so build them once."""
    perms: npt.NDArray[np.uint32] = MinHash(num_perm=num_perm, seed=MINHASH_SEED, scheme=MINHASH_SCHEME).permutations
    return perms


def _minhash(text: str, num_perm: int) -> npt.NDArray[np.uint32]:
    mh = MinHash(num_perm=num_perm, seed=MINHASH_SEED, scheme=MINHASH_SCHEME, permutations=_permutations(num_perm))
    mh.update_batch([s.encode("utf-8") for s in shingles(text)])
    values: npt.NDArray[np.uint32] = mh.hashvalues
    return values


def signature(text: str, num_perm: int) -> list[int]:
    """MinHash signature of ``text``: identical in every worker process for the same text."""
    return [int(v) for v in _minhash(text, num_perm)]


@lru_cache(maxsize=64)
def band_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) minimising datasketch's weighted false positive / negative probability."""
    bands, rows = _optimal_param(threshold, num_perm, FALSE_POSITIVE_WEIGHT, FALSE_NEGATIVE_WEIGHT)
    return int(bands), int(rows)


def exact_hash(text: str) -> str:
    """Hash of the normalised text: case, spacing and sentence punctuation do not matter."""
    return hashlib.blake2b(normalise_text(text).encode("utf-8"), digest_size=16).hexdigest()


def _band_hashes(packed: bytes, bands: int, rows: int) -> list[bytes]:
    width = rows * VALUE_BYTES
    return [
        hashlib.blake2b(packed[i * width : (i + 1) * width], digest_size=BAND_HASH_BYTES).digest() for i in range(bands)
    ]


def _decode(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


class Deduper:
    """Atomic check-and-insert against one job's duplicate state; one instance per worker process."""

    def __init__(self) -> None:
        self._script: AsyncScript | None = None

    async def check_and_add(
        self, redis: Redis, job_id: str, example_id: str, text: str, settings: DedupSettings
    ) -> DedupResult:
        """Return the duplicate it is of, or record ``text`` as kept under ``example_id`` and return new.

        Call it only for items that will be kept otherwise (after the quality checks): whatever is
        recorded here blocks later look-alikes.
        """
        if not settings.exact and not settings.near:
            return DedupResult()
        xh = exact_hash(text) if settings.exact else ""
        packed = b""
        band_hashes: list[bytes] = []
        band_keys: list[str] = []
        need = 0
        if settings.near:
            bands, rows = band_params(settings.threshold, settings.num_perm)
            packed = _minhash(text, settings.num_perm).astype(">u4").tobytes()
            band_hashes = _band_hashes(packed, bands, rows)
            prefix = keys.lsh_prefix(job_id)
            band_keys = [f"{prefix}{b}" for b in range(bands)]
            # Tolerance: 0.7 * 128 is 89.6 in floating point, which must need 90 equal positions.
            need = math.ceil(settings.threshold * settings.num_perm - 1e-9)
        if self._script is None:
            self._script = redis.register_script(_CHECK_AND_ADD)
        reply = await self._script(
            keys=[keys.exact(job_id), keys.signatures(job_id), *band_keys],
            args=[example_id, xh, packed, need, *band_hashes],
            client=redis,
        )
        code = int(reply[0])
        if code == 0:
            return DedupResult()
        reason = Reason.EXACT_DUPLICATE if code == 1 else Reason.NEAR_DUPLICATE
        return DedupResult(reason=reason, duplicate_of=_decode(reply[1]))
