"""Endpoint lookup: the process settings first, then endpoints registered at run time in Redis.

Run-time registration is how ``skillmix local-llm`` makes its freshly started server known to every
worker and API process without restarting them.
"""

import hashlib
import os
from typing import Literal

from redis.asyncio import Redis

from schemas.errors import BadInput
from schemas.settings import EndpointSettings, Settings
from store import keys


class UnknownEndpoint(BadInput, LookupError):
    """A name nobody configured; ``field`` is the spec field that gave it, so the 422 points there."""


class NoBatch(BadInput):
    """A ``mode: batch`` job names an endpoint without ``batch: true``: refused at submit, naming the field."""


async def register(redis: Redis, name: str, endpoint: EndpointSettings) -> None:
    await redis.hset(keys.ENDPOINTS, name, endpoint.model_dump_json())


async def unregister(redis: Redis, name: str) -> None:
    await redis.hdel(keys.ENDPOINTS, name)


async def registered(redis: Redis) -> set[str]:
    """Names of the endpoints registered at run time (the settings' own are in ``settings.endpoints``)."""
    return {k.decode() for k in await redis.hkeys(keys.ENDPOINTS)}


async def find(redis: Redis, settings: Settings, name: str) -> EndpointSettings | None:
    if name in settings.endpoints:
        return settings.endpoints[name]
    raw = await redis.hget(keys.ENDPOINTS, name)
    return None if raw is None else EndpointSettings.model_validate_json(raw)


async def resolve(
    redis: Redis,
    settings: Settings,
    name: str,
    field: str = "endpoint",
    mode: Literal["online", "batch"] = "online",
) -> EndpointSettings:
    """The endpoint called ``name``; ``UnknownEndpoint`` naming ``field`` (where the name came from) if none.
    Every route that creates a job resolves each endpoint the job calls here with the spec's ``mode``, so a
    batch job whose endpoint does not serve batches is refused at submit (``NoBatch``), not in a worker."""
    found = await find(redis, settings, name)
    if found is None:
        known = sorted(set(settings.endpoints) | await registered(redis))
        raise UnknownEndpoint(
            f"unknown endpoint {name!r}; known: {', '.join(known) or 'none'}. Configure it with "
            f"SKILLMIX_ENDPOINTS__{name.upper()}__BASE_URL and __MODEL, or start `skillmix local-llm`.",
            field,
        )
    if mode == "batch" and not found.batch:
        raise NoBatch(
            f"mode 'batch' needs every endpoint the job calls to serve batches, but endpoint {name!r} ({field}) "
            f"has no `batch: true`; set SKILLMIX_ENDPOINTS__{name.upper()}__BATCH=true if it serves OpenAI's "
            "/v1/files + /v1/batches, or submit with mode 'online'",
            field,
        )
    return found


def fingerprint(endpoint: EndpointSettings) -> str:
    """Changes whenever a client built from these settings would differ: a new port, model, limit or key."""
    key = os.environ.get(endpoint.api_key_env, "") if endpoint.api_key_env else ""
    return hashlib.sha256(endpoint.model_dump_json().encode() + b"\0" + key.encode()).hexdigest()
