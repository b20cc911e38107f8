"""How every process opens Redis: arq's pool, with a timeout on connecting and on every reply.

arq sets only a connect timeout; without a read timeout a half-open connection (a Redis host that vanished
without a FIN) would hang a worker or an API request for ever.
"""

import logging

from arq import Retry
from arq.connections import ArqRedis, RedisSettings, create_pool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import WatchError

from schemas.settings import Settings

log = logging.getLogger(__name__)

# What a Redis that is restarting, failing over or briefly overloaded raises; none of it may end a worker.
REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError)
# the builtins come from arq's own connect loop; a WatchError escapes arq's job pickup when the connection
# drops while it watches a key ("A ConnectionError occurred on while watching one or more keys")
REDIS_DOWN = (*REDIS_ERRORS, WatchError, ConnectionError, OSError)


def redis_settings(settings: Settings) -> RedisSettings:
    redis = RedisSettings.from_dsn(settings.redis_url)
    redis.conn_timeout = max(1, round(settings.redis_timeout_s))  # arq's 1 s is tight on a loaded machine
    return redis


async def open_redis(settings: Settings) -> ArqRedis:
    """A connected pool whose every connection times out reads after ``redis_timeout_s``."""
    pool = await create_pool(redis_settings(settings))
    pool.connection_pool.connection_kwargs["socket_timeout"] = settings.redis_timeout_s
    await pool.connection_pool.disconnect()  # the ping's connection was made without it
    pool.connection_pool.reset()
    return pool


def redis_trouble(exc: BaseException) -> bool:
    """Whether an error (or any error in a task group's) means Redis is away, so the work should rerun."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(lambda e: isinstance(e, REDIS_ERRORS)) is not None
    return isinstance(exc, REDIS_ERRORS)  # not the builtins: a missing file is no reason to rerun


def rerun_on_redis_trouble(exc: Exception, job_try: int, what: str) -> None:
    """Turn a Redis error in an arq job into a retry; returns for any other error (the caller re-raises).

    arq records a job that raised as failed, and a failed chunk's or step's work would never come; run it
    again instead (its finished work is stored). If Redis is really gone, ``run_resilient`` takes over.
    """
    if redis_trouble(exc):
        log.warning("Redis error in %s (%r); retry %d", what, exc, job_try)
        raise Retry(defer=min(job_try, 10)) from exc
