"""A worker process's own Prometheus metrics, served on ``SKILLMIX_METRICS_PORT`` (see ``serve``).

The fleet's totals (jobs, items, calls, tokens, cost, ``skillmix:stats``) are the API's ``GET /metrics``;
these are what only one process knows: how long its LLM requests take, how many are in flight, what its
replay cache and limiter did. They live in prometheus-client's default registry (with its process and GC
collectors). The hot path never looks labels up: clients cache their children (``RequestMetrics``) and the
helpers below cache theirs per endpoint.
"""

import logging
import threading
from functools import cache

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

OK, RATE_LIMITED, ERROR, TIMEOUT = "ok", "429", "error", "timeout"

REQUEST_SECONDS = Histogram(
    "skillmix_llm_request_seconds",
    "LLM requests that left this process, by endpoint and outcome (ok, 429, error, timeout), in seconds",
    ["endpoint", "outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0),
)
IN_FLIGHT = Gauge("skillmix_llm_in_flight", "LLM requests of this process under way, by endpoint", ["endpoint"])
REPLAY_HITS = Counter(
    "skillmix_replay_hits", "LLM answers this process replayed from the response cache, by endpoint", ["endpoint"]
)
LIMITER_WAIT_SECONDS = Histogram(
    "skillmix_limiter_wait_seconds",
    "time this process's calls waited for the rate limiter, by endpoint, in seconds",
    ["endpoint"],
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)


class RequestMetrics:
    """One endpoint's labelled children, looked up once per ``LLMClient``: a call costs one observe and an
    in-flight inc/dec."""

    __slots__ = ("error", "in_flight", "ok", "rate_limited", "timeout")

    def __init__(self, endpoint: str) -> None:
        self.in_flight = IN_FLIGHT.labels(endpoint)
        self.ok = REQUEST_SECONDS.labels(endpoint, OK)
        self.rate_limited = REQUEST_SECONDS.labels(endpoint, RATE_LIMITED)
        self.error = REQUEST_SECONDS.labels(endpoint, ERROR)
        self.timeout = REQUEST_SECONDS.labels(endpoint, TIMEOUT)

    def outcome(self, status: int) -> Histogram:
        """The histogram a request that got an HTTP ``status`` is timed in."""
        return self.ok if status == 200 else self.rate_limited if status == 429 else self.error


@cache
def _replay_child(endpoint: str) -> Counter:
    return REPLAY_HITS.labels(endpoint)


@cache
def _limiter_child(endpoint: str) -> Histogram:
    return LIMITER_WAIT_SECONDS.labels(endpoint)


def replay_hit(endpoint: str, hits: int = 1) -> None:
    """Count answers served from the replay cache (call from the replay path)."""
    _replay_child(endpoint).inc(hits)


def limiter_waited(endpoint: str, seconds: float) -> None:
    """Record how long one call waited for the limiter (call once per acquired slot)."""
    _limiter_child(endpoint).observe(seconds)


_lock = threading.Lock()
_serving: tuple[str, int] | None = None


def serve(port: int, host: str = "127.0.0.1") -> bool:
    """Serve the default registry on ``host:port`` once per process (a thread); a worker restarted in the same
    process keeps the first server. A port already taken is logged, naming it, and the worker runs on:
    several workers on one machine each need their own ``SKILLMIX_METRICS_PORT``."""
    global _serving
    with _lock:
        if _serving is not None:
            return True
        try:
            start_http_server(port, addr=host)
        except OSError as exc:
            log.error("metrics port %s:%d unavailable (%s); this worker serves no metrics", host, port, exc)
            return False
        _serving = (host, port)
        log.info("worker metrics on http://%s:%d/metrics", host, port)
        return True
