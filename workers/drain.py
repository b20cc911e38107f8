"""Graceful stop: the process-wide "draining" flag a worker raises on SIGTERM or SIGINT.

While it is up, no new LLM call leaves this process (``refuse_new_calls``, checked by every metered call
before its bytes are written), calls already sent finish, and each running chunk hands its unfinished
items back to the queue at once (``workers.worker``) instead of leaving them to the heartbeat reaper.
One flag per process, because the signal belongs to the process, not to one job.
"""

from schemas.errors import Interrupted


class WorkerDraining(Interrupted):
    """This worker is stopping: the call is refused before it is sent and its chunk is handed back."""


_draining = False


def start() -> None:
    """Raise the flag (from a signal handler on the event loop; idempotent)."""
    global _draining
    _draining = True


def draining() -> bool:
    return _draining


def refuse_new_calls(refusable: bool = True) -> None:
    """Raise ``WorkerDraining`` once the worker is stopping: the call that would start now is not paid for.

    ``refusable=False`` (review help, a few calls a person waits for) lets the call go: it ends within the grace.
    """
    if _draining and refusable:
        raise WorkerDraining("this worker is stopping; the chunk goes back to the queue")


def reset() -> None:
    """Lower the flag: a new worker in the same process (tests, an in-process restart) starts clean."""
    global _draining
    _draining = False
