"""OpenAI's Files + Batch API for the fake endpoint: ``tests/fake_llm.py`` serves these routes beside chat.

Written from OpenAI's API reference. A JSONL input file (one request a line: ``custom_id``, ``method``,
``url``, ``body``) is uploaded with purpose ``batch``; a batch over it goes validating -> in_progress ->
finalizing -> completed, or ends ``failed`` (validation), ``expired`` or cancelling -> ``cancelled``. Results
come back as an output file (lines answered 200) and an error file (lines answered 4xx/5xx, plus
``batch_expired`` / ``batch_cancelled`` lines), each shuffled. Every line is answered exactly as
``/v1/chat/completions`` would answer its body (the answerer is handed in by fake_llm, so this module knows
nothing of answers), and every line answered 200 is billed, counted per request body, so a test sees a
request paid twice.

Time is evaluated lazily: a batch's phase follows from its creation time and ``batch_latency_s`` whenever
anything reads it (a batch or file route, ``/admin/stats``); there is no background task. A batch's lines are
answered when it leaves in_progress, in slices that let the event loop serve other requests (10,000 pair
lines take ~5 s of CPU); a reader of that batch waits for it under the batch's lock. Which lines fail,
which finish before an expiry or a cancel, and the output order follow from ``batch_seed`` and the ids
(counters), so a rerun produces the same files.
"""

import asyncio
import hashlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

CHAT_URL = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
WINDOW_S = 24 * 3600
MB = 1024 * 1024
MAX_ERRORS = 1000  # validation errors reported per batch
ANSWER_SLICE = 100  # lines answered between two yields to the event loop
# a batch's phases as fractions of its latency: validating until 0.2, in_progress until 0.8, then finalizing
IN_PROGRESS_AT, FINALIZING_AT = 0.2, 0.8
TERMINAL = frozenset({"failed", "completed", "expired", "cancelled"})
FILE_PURPOSES = frozenset({"batch", "batch_output", "fine-tune", "assistants", "vision", "user_data", "evals"})
REQUIRED = ("custom_id", "method", "url", "body")
LineFault = Literal["server_error", "rate_limit_exceeded", "invalid_request"]
FAULTS: dict[str, tuple[int, str]] = {
    "server_error": (500, "The server had an error while processing your request."),
    "rate_limit_exceeded": (429, "Rate limit reached for requests."),
    "invalid_request": (400, "The request is invalid and was not processed."),
}
UNFINISHED = {
    "batch_expired": "This request could not be executed before the completion window expired.",
    "batch_cancelled": "The batch was cancelled before this request executed.",
}


class BatchConfig(BaseModel):
    """The batch knobs; ``FakeConfig`` extends this, so they are flags and ``/admin/config`` fields too."""

    model_config = ConfigDict(extra="forbid")

    batch_latency_s: float = Field(0.5, ge=0, description="creation to completed (validating 20%, finalizing 20%)")
    batch_cancel_s: float = Field(0.2, ge=0, description="cancelling to cancelled")
    batch_max_requests: int = Field(50_000, ge=1, description="lines in one input file, else the batch fails")
    batch_max_mb: float = Field(200.0, gt=0, description="MiB in one input file, else the batch fails")
    batch_error_rate: float = Field(
        0.0, ge=0, le=1, description="lines failing 500/429 (drawn per batch and custom_id: a resubmit may pass)"
    )
    batch_invalid_rate: float = Field(
        0.0, ge=0, le=1, description="lines failing 400 invalid_request (drawn per body: fails every time)"
    )
    batch_fail_lines: dict[str, LineFault] = Field(
        default_factory=dict, description="custom_id -> fault, applied in every batch while set"
    )
    batch_expire_next: int = Field(0, ge=0, description="the next N batches created expire")
    batch_reject_next: int = Field(0, ge=0, description="the next N batches fail validation: token_limit_exceeded")
    batch_done_fraction: float = Field(
        0.5, ge=0, le=1, description="share of lines finished when a batch expires or is cancelled in progress"
    )
    batch_file_ttl_s: float = Field(30 * 86400.0, gt=0, description="files (uploads and results) vanish after this")
    batch_seed: int = Field(0, description="seed of ids, line faults and output order")


@dataclass
class LineAnswer:
    """What ``/v1/chat/completions`` answered one body: status, JSON body, and billed usage when 200."""

    status: int
    body: dict[str, Any]
    prompt_tokens: int = 0
    completion_tokens: int = 0


Answerer = Callable[[Any], LineAnswer]
Refuser = Callable[[Any], LineAnswer | None]
Guard = Callable[[Request], Response | None]


def openai_error(status: int, code: str | None, message: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error envelope."""
    kind = "requests" if status == 429 else "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers, media_type="application/json")


def _error(status: int, code: str | None, message: str, param: str | None = None) -> Response:
    return json_response(openai_error(status, code, message, param), status)


def _not_found(kind: str, object_id: str) -> Response:
    return _error(404, None, f"No such {kind} object: {object_id}", "id")


def body_key(body: Any) -> str:
    """The billing key of a request body (sha256 of its canonical JSON): equal bodies bill to one key."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _hex(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


def _draw(*parts: object) -> float:
    """A number in [0, 1) fixed by ``parts``."""
    return int(_hex(*parts)[:16], 16) / 2**64


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: float  # wall clock
    expires_at: float

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": int(self.created_at),
            "expires_at": int(self.expires_at),
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


@dataclass
class Line:
    number: int  # 1-based line of the input file
    custom_id: str
    body: dict[str, Any]


@dataclass
class Batch:
    id: str
    input_file_id: str
    metadata: dict[str, str] | None
    started: float  # monotonic
    wall0: float  # wall clock at ``started``
    latency_s: float
    lines: list[Line]
    errors: list[dict[str, Any]]  # validation errors; non-empty -> the batch fails
    order: list[int]  # line indices in the order they finish (seeded shuffle)
    expire: bool
    done_fraction: float  # of an expiring batch
    status: str = "validating"
    stamps: dict[str, float] = field(default_factory=dict)  # "<status>_at" -> monotonic time
    results: tuple[list[dict[str, Any]], list[dict[str, Any]]] | None = None  # (output, error) until filed
    finished: bool = False  # lines answered (all, or a share at an expiry or cancel)
    completed: int = 0
    failed: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    output_file_id: str | None = None
    error_file_id: str | None = None

    def at(self, fraction: float) -> float:
        return self.started + fraction * self.latency_s

    def wall(self, mono: float | None) -> int | None:
        return None if mono is None else int(self.wall0 + (mono - self.started))

    def public(self) -> dict[str, Any]:
        validated = self.status != "validating" and not self.errors
        stamp = {name: self.wall(self.stamps.get(name)) for name in (
            "in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at",
            "cancelled_at",
        )}  # fmt: skip
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": CHAT_URL,
            "errors": {"object": "list", "data": self.errors} if self.errors and self.status == "failed" else None,
            "input_file_id": self.input_file_id,
            "completion_window": COMPLETION_WINDOW,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.wall(self.started),
            "expires_at": int(self.wall0) + WINDOW_S,
            **stamp,
            "request_counts": {
                "total": len(self.lines) if validated else 0,
                "completed": self.completed,
                "failed": self.failed,
            },
            "metadata": self.metadata,
        }


def validate_lines(content: bytes, cfg: BatchConfig) -> tuple[list[Line], list[dict[str, Any]]]:
    """The input file's request lines, or the errors that fail the batch (OpenAI's {code, message, line})."""

    def error(code: str, message: str, line: int | None = None, param: str | None = None) -> dict[str, Any]:
        return {"code": code, "message": message, "param": param, "line": line}

    if len(content) > cfg.batch_max_mb * MB:
        return [], [error("file_too_large", f"The input file is larger than {cfg.batch_max_mb:g} MB.")]
    numbered = [(n, raw) for n, raw in enumerate(content.splitlines(), 1) if raw.strip()]
    if not numbered:
        return [], [error("empty_file", "The input file has no requests.")]
    if len(numbered) > cfg.batch_max_requests:
        message = f"The input file has {len(numbered)} requests; at most {cfg.batch_max_requests} are allowed."
        return [], [error("too_many_requests", message)]
    lines: list[Line] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    model: Any = None
    for n, raw in numbered:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            errors.append(error("invalid_json_line", "This line is not a JSON object.", n))
            continue
        missing = [name for name in REQUIRED if name not in data]
        if missing:
            errors.append(error("missing_required_parameter", f"Missing '{missing[0]}'.", n, missing[0]))
        elif not isinstance(data["custom_id"], str) or not data["custom_id"]:
            errors.append(error("invalid_custom_id", "'custom_id' must be a non-empty string.", n, "custom_id"))
        elif data["custom_id"] in seen:
            errors.append(error("duplicate_custom_id", "The custom_id is already used in this file.", n, "custom_id"))
        elif data["method"] != "POST":
            errors.append(error("invalid_method", "Only POST is supported.", n, "method"))
        elif data["url"] != CHAT_URL:
            errors.append(error("invalid_url", f"The url must be {CHAT_URL}, the batch's endpoint.", n, "url"))
        elif not isinstance(data["body"], dict):
            errors.append(error("invalid_body", "'body' must be a JSON object.", n, "body"))
        elif lines and data["body"].get("model") != model:
            errors.append(error("mismatched_model", "All requests of a batch must use the same model.", n, "model"))
        else:
            seen.add(data["custom_id"])
            model = data["body"].get("model") if not lines else model
            lines.append(Line(n, data["custom_id"], data["body"]))
    return lines, errors[:MAX_ERRORS]


def _metadata_ok(metadata: Any) -> bool:
    """OpenAI's metadata bounds: at most 16 pairs, string keys up to 64 and values up to 512 characters."""
    if not isinstance(metadata, dict) or len(metadata) > 16:
        return False
    return all(
        isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512 for k, v in metadata.items()
    )


class BatchStore:
    """Files, batches and the batch billing counters of one fake server."""

    def __init__(
        self, config: Callable[[], BatchConfig], refuse: Refuser, answer: Answerer, guard: Guard | None = None
    ) -> None:
        self.config = config  # read anew each time, so /admin/config changes apply
        self.refuse = refuse  # the endpoint's own 4xx for a body, decided before any injected fault
        self.answer = answer
        self.guard = guard
        self.reset()

    def reset(self) -> None:
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, Batch] = {}  # insertion order = creation order
        self.ids = 0
        self.counts: dict[str, int] = dict.fromkeys(
            ("files_uploaded", "batches_created", "batch_lines_billed", "batch_rebilled", "batch_lines_failed",
             "batch_prompt_tokens", "batch_completion_tokens"), 0
        )  # fmt: skip
        self.billed_by_body: dict[str, int] = {}

    def stats(self) -> dict[str, Any]:
        """The counters as they stand; ``await advance_all()`` first to bring every batch up to now."""
        statuses: dict[str, int] = {}
        for batch in self.batches.values():
            statuses[batch.status] = statuses.get(batch.status, 0) + 1
        return {**self.counts, "batch_billed_by_body": dict(self.billed_by_body), "batch_statuses": statuses}

    def _new_id(self, prefix: str) -> str:
        self.ids += 1
        return prefix + _hex(self.config().batch_seed, prefix, self.ids)[:24]

    def _store_file(self, filename: str, purpose: str, content: bytes) -> StoredFile:
        now = time.time()
        stored = StoredFile(
            self._new_id("file-"), filename, purpose, content, now, now + self.config().batch_file_ttl_s
        )
        self.files[stored.id] = stored
        return stored

    def _file(self, file_id: str) -> StoredFile | None:
        stored = self.files.get(file_id)
        if stored is not None and stored.expires_at <= time.time():
            del self.files[file_id]
            return None
        return stored

    # --- time -----------------------------------------------------------------------------------

    async def advance_all(self) -> None:
        now = time.monotonic()
        for batch in list(self.batches.values()):
            await self.advance(batch, now)

    async def advance(self, batch: Batch, now: float) -> None:
        async with batch.lock:
            await self._advance(batch, now)

    async def _advance(self, batch: Batch, now: float) -> None:
        """Move ``batch`` through every phase whose time has come (caller holds its lock)."""
        if batch.status == "cancelling":
            if now >= batch.stamps["cancelling_at"] + self.config().batch_cancel_s:
                self._end(batch, "cancelled", batch.stamps["cancelling_at"] + self.config().batch_cancel_s)
            return
        if batch.status == "validating" and now >= batch.at(IN_PROGRESS_AT):
            if batch.errors:
                self._end(batch, "failed", batch.at(IN_PROGRESS_AT))
                return
            batch.status, batch.stamps["in_progress_at"] = "in_progress", batch.at(IN_PROGRESS_AT)
        if batch.status == "in_progress" and batch.expire and now >= batch.at(1.0):
            await self._finish(batch, math.floor(batch.done_fraction * len(batch.lines)), "batch_expired")
            self._end(batch, "expired", batch.at(1.0))
        elif batch.status == "in_progress" and not batch.expire and now >= batch.at(FINALIZING_AT):
            await self._finish(batch, len(batch.lines), "batch_expired")
            batch.status, batch.stamps["finalizing_at"] = "finalizing", batch.at(FINALIZING_AT)
        if batch.status == "finalizing" and now >= batch.at(1.0):
            self._end(batch, "completed", batch.at(1.0))

    def _end(self, batch: Batch, status: str, at: float) -> None:
        batch.status, batch.stamps[f"{status}_at"] = status, at
        if batch.results is None:
            return
        out, err = batch.results
        for lines, kind in ((out, "output"), (err, "error")):
            if lines:
                content = b"".join(orjson.dumps(line) + b"\n" for line in lines)
                stored = self._store_file(f"batch_{batch.id}_{kind}.jsonl", "batch_output", content)
                setattr(batch, f"{kind}_file_id", stored.id)
        batch.results = None  # the files hold them now

    # --- answering ------------------------------------------------------------------------------

    async def _finish(self, batch: Batch, done: int, unfinished_code: str) -> None:
        """Answer the first ``done`` lines (in finishing order) and bill them; the rest get ``unfinished_code``."""
        cfg = self.config()
        out: list[dict[str, Any]] = []
        err: list[dict[str, Any]] = []
        for position, index in enumerate(batch.order):
            if position % ANSWER_SLICE == ANSWER_SLICE - 1:
                await asyncio.sleep(0)
            line = batch.lines[index]
            record: dict[str, Any] = {"id": "batch_req_" + _hex(batch.id, line.custom_id)[:24]}
            record["custom_id"] = line.custom_id
            if position >= done:
                error = {"code": unfinished_code, "message": UNFINISHED[unfinished_code]}
                err.append(record | {"response": None, "error": error})
                continue
            answer = self._run(batch, line, cfg)
            request_id = _hex("request", batch.id, line.custom_id)[:32]
            response = {"status_code": answer.status, "request_id": request_id, "body": answer.body}
            (out if answer.status == 200 else err).append(record | {"response": response, "error": None})
            if answer.status == 200:
                self._bill(line.body, answer)
        self.counts["batch_lines_failed"] += len(err)
        batch.results, batch.finished, batch.completed, batch.failed = (out, err), True, len(out), len(err)

    def _run(self, batch: Batch, line: Line, cfg: BatchConfig) -> LineAnswer:
        fault = cfg.batch_fail_lines.get(line.custom_id)
        if fault is None and (refused := self.refuse(line.body)) is not None:
            return refused
        if fault is None and _draw(cfg.batch_seed, "invalid", body_key(line.body)) < cfg.batch_invalid_rate:
            fault = "invalid_request"
        if fault is None and _draw(cfg.batch_seed, "error", batch.id, line.custom_id) < cfg.batch_error_rate:
            rate_limited = _draw(cfg.batch_seed, "kind", batch.id, line.custom_id) < 0.5
            fault = "rate_limit_exceeded" if rate_limited else "server_error"
        if fault is not None:
            status, message = FAULTS[fault]
            return LineAnswer(status, openai_error(status, fault, message))
        return self.answer(line.body)

    def _bill(self, body: dict[str, Any], answer: LineAnswer) -> None:
        key = body_key(body)
        self.billed_by_body[key] = self.billed_by_body.get(key, 0) + 1
        self.counts["batch_rebilled"] += self.billed_by_body[key] > 1
        self.counts["batch_lines_billed"] += 1
        self.counts["batch_prompt_tokens"] += answer.prompt_tokens
        self.counts["batch_completion_tokens"] += answer.completion_tokens

    # --- routes ---------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        def guarded(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
            async def route(request: Request) -> Response:
                refused = self.guard(request) if self.guard else None
                if refused is not None:
                    return refused
                response: Response = await handler(request)
                return response

            return route

        return [
            Route("/v1/files", guarded(self.upload), methods=["POST"]),
            Route("/v1/files", guarded(self.list_files), methods=["GET"]),
            Route("/v1/files/{file_id}", guarded(self.get_file), methods=["GET"]),
            Route("/v1/files/{file_id}", guarded(self.delete_file), methods=["DELETE"]),
            Route("/v1/files/{file_id}/content", guarded(self.file_content), methods=["GET"]),
            Route("/v1/batches", guarded(self.create_batch), methods=["POST"]),
            Route("/v1/batches", guarded(self.list_batches), methods=["GET"]),
            Route("/v1/batches/{batch_id}", guarded(self.get_batch), methods=["GET"]),
            Route("/v1/batches/{batch_id}/cancel", guarded(self.cancel_batch), methods=["POST"]),
        ]

    async def upload(self, request: Request) -> Response:
        """POST /v1/files: multipart with ``file`` and ``purpose``."""
        try:
            async with request.form() as form:
                upload, purpose = form.get("file"), form.get("purpose")
                if upload is None or isinstance(upload, str):
                    return _error(400, "missing_required_parameter", "Missing required parameter: 'file'.", "file")
                content, filename = await upload.read(), upload.filename or "upload.jsonl"
        except (AssertionError, ValueError) as exc:  # not multipart (starlette asserts python-multipart too)
            return _error(400, "invalid_request_error", f"Expected a multipart form: {exc}")
        if not isinstance(purpose, str) or purpose not in FILE_PURPOSES - {"batch_output"}:
            return _error(400, "invalid_value", f"Invalid purpose: {purpose!r}.", "purpose")
        self.counts["files_uploaded"] += 1
        return json_response(self._store_file(filename, purpose, content).public())

    async def list_files(self, request: Request) -> Response:
        purpose = request.query_params.get("purpose")
        found = [f.public() for f in list(self.files.values()) if self._file(f.id) and purpose in (None, f.purpose)]
        first, last = (found[0]["id"], found[-1]["id"]) if found else (None, None)
        return json_response({"object": "list", "data": found, "first_id": first, "last_id": last, "has_more": False})

    async def get_file(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        stored = self._file(file_id)
        return json_response(stored.public()) if stored else _not_found("File", file_id)

    async def delete_file(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        if self._file(file_id) is None:
            return _not_found("File", file_id)
        del self.files[file_id]
        return json_response({"id": file_id, "object": "file", "deleted": True})

    async def file_content(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        stored = self._file(file_id)
        if stored is None:
            return _not_found("File", file_id)
        return Response(stored.content, 200, media_type="application/octet-stream")

    async def create_batch(self, request: Request) -> Response:
        """POST /v1/batches {input_file_id, endpoint, completion_window, metadata}."""
        try:
            spec = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            spec = None
        if not isinstance(spec, dict):
            return _error(400, "invalid_request_error", "Expected a JSON object.")
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not isinstance(spec.get(name), str):
                return _error(400, "missing_required_parameter", f"Missing required parameter: '{name}'.", name)
        if spec["endpoint"] != CHAT_URL:
            return _error(400, "invalid_value", f"This server batches only {CHAT_URL}.", "endpoint")
        if spec["completion_window"] != COMPLETION_WINDOW:
            return _error(400, "invalid_value", "completion_window must be '24h'.", "completion_window")
        metadata = spec.get("metadata")
        if metadata is not None and not _metadata_ok(metadata):
            return _error(400, "invalid_value", "metadata: at most 16 string pairs (keys 64, values 512).", "metadata")
        stored = self._file(spec["input_file_id"])
        if stored is None:
            return _error(404, None, f"No such File object: {spec['input_file_id']}", "input_file_id")
        if stored.purpose != "batch":
            return _error(400, "invalid_value", "The input file must have purpose 'batch'.", "input_file_id")
        cfg = self.config()
        lines, errors = validate_lines(stored.content, cfg)
        if cfg.batch_reject_next > 0:  # a transient refusal: the organisation's enqueued-token limit
            cfg.batch_reject_next -= 1
            errors = [{"code": "token_limit_exceeded", "message": "Enqueued token limit reached; try again later.",
                       "param": None, "line": None}]  # fmt: skip
        expire = cfg.batch_expire_next > 0
        cfg.batch_expire_next -= expire
        batch_id = self._new_id("batch_")
        order = list(range(len(lines)))
        random.Random(_hex(cfg.batch_seed, "order", batch_id)).shuffle(order)
        batch = Batch(
            id=batch_id,
            input_file_id=stored.id,
            metadata=metadata,
            started=time.monotonic(),
            wall0=time.time(),
            latency_s=cfg.batch_latency_s,
            lines=[] if errors else lines,
            errors=errors,
            order=[] if errors else order,
            expire=expire,
            done_fraction=cfg.batch_done_fraction,
        )
        self.batches[batch_id] = batch
        self.counts["batches_created"] += 1
        await self.advance(batch, batch.started)  # a zero latency finishes at once
        return json_response(batch.public())

    async def get_batch(self, request: Request) -> Response:
        batch = self.batches.get(request.path_params["batch_id"])
        if batch is None:
            return _not_found("Batch", request.path_params["batch_id"])
        await self.advance(batch, time.monotonic())
        return json_response(batch.public())

    async def list_batches(self, request: Request) -> Response:
        """Newest first, ``limit`` (1-100, default 20) after the cursor ``after``."""
        try:
            limit = int(request.query_params.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 100:
            return _error(400, "invalid_value", "limit must be 1 to 100.", "limit")
        await self.advance_all()
        ids = list(reversed(self.batches))
        after = request.query_params.get("after")
        if after is not None:
            ids = ids[ids.index(after) + 1 :] if after in ids else []
        page = [self.batches[i].public() for i in ids[:limit]]
        first, last = (page[0]["id"], page[-1]["id"]) if page else (None, None)
        return json_response(
            {"object": "list", "data": page, "first_id": first, "last_id": last, "has_more": len(ids) > limit}
        )

    async def cancel_batch(self, request: Request) -> Response:
        """POST /v1/batches/{id}/cancel: lines finished by then are kept (and billed), the rest are cancelled."""
        batch = self.batches.get(request.path_params["batch_id"])
        if batch is None:
            return _not_found("Batch", request.path_params["batch_id"])
        now = time.monotonic()
        async with batch.lock:
            await self._advance(batch, now)
            if batch.status in ("cancelling", "cancelled"):
                return json_response(batch.public())
            if batch.status in TERMINAL:
                return _error(409, None, f"Cannot cancel a batch with status '{batch.status}'.")
            if not batch.finished:  # validating or in progress: a share of the lines got done
                share = self.config().batch_done_fraction if batch.status == "in_progress" else 0.0
                await self._finish(batch, math.floor(share * len(batch.lines)), "batch_cancelled")
            batch.status, batch.stamps["cancelling_at"] = "cancelling", now
            await self._advance(batch, now)  # a zero batch_cancel_s cancels at once
            return json_response(batch.public())
