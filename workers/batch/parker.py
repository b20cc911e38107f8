"""A batch job's view of an endpoint: a call is not sent, its request becomes a line of the job's gathering
batch file, and the item parks (``Parked``) without holding a worker.

Layering (``workers.generate.run_chunk``, ``workers.meter.job_llm``)::

    ReplayClient(BatchParker(endpoint client))

``ReplayClient`` answers every turn already answered (a batch's answers are written into the replay cache by
``workers.batch.manager``), so a rerun item replays its conversation and parks at its first unanswered turn:
a 5-turn conversation takes about 5 rounds. The line's ``custom_id`` is the answer's place in the replay
cache, so the same request from a rerun is the same line: parked twice, it is still one line in one batch.
"""

from typing import Unpack

import orjson
from redis.asyncio import Redis

from schemas.batches import RequestLine
from schemas.errors import Interrupted
from schemas.llm import ChatMessage, ChatResult
from store import batches, keys
from workers.llm.client import ChatOptions, LLMClient
from workers.llm.errors import JobStopped
from workers.llm.replay import kept_answer, pending_place

_HOOKS = frozenset({"on_send", "gate"})


class Parked(Interrupted):
    """The item's request went into a batch file: the item stops here and resumes when it is answered."""


class WaitingOnBatch(Interrupted):
    """Items of the unit are parked on batch lines: the unit waits in the queue (holding no worker) until the
    batch manager wakes it."""


class BatchParker:
    """Parks each call of one unit (``unit``: its arq id, woken when an answer comes) as a batch line."""

    def __init__(self, redis: Redis, job_id: str, client: LLMClient, unit: str) -> None:
        self.redis, self.job_id, self.client, self.unit = redis, job_id, client, unit
        self.group = batches.Group(job_id, client.name)
        self.name, self.endpoint = client.name, client.endpoint  # read by ReplayClient / prices_for

    async def chat(self, messages: list[ChatMessage], **options: Unpack[ChatOptions]) -> ChatResult:
        place = pending_place()
        if place is None:
            raise RuntimeError("batch mode: a call outside an item scope has no place to be answered")
        scope, field = place
        cid = batches.custom_id(scope, field)
        params = {k: v for k, v in options.items() if k not in _HOOKS}
        body = self.client.request_body(messages, **params)  # type: ignore[arg-type]
        line = orjson.dumps(RequestLine(custom_id=cid, body=body).model_dump()).decode()
        kind, value = await batches.park(
            self.redis, self.group, cid, line, self.unit, keys.replay(self.job_id, scope), field
        )
        if kind == "answered":  # answered after this unit read its cache: take it, never ask again
            return kept_answer(value)
        if kind == "stopped":
            raise JobStopped(self.job_id)
        raise Parked(cid)
