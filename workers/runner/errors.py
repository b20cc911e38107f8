"""What a unit may tell the runner (``workers.runner.step``), which maps each to one outcome for every kind."""

from schemas.errors import Interrupted, JobFailed, Transient


class EndpointDown(Transient):
    """Calls could not reach the endpoint even after the client's retries: the step is retried later (backoff),
    from where it stands (finished work is skipped, answered calls are replayed)."""


class JobResumed(Interrupted):
    """Calls were refused while the job was paused and it was resumed before the step ended: run it again
    (resuming cannot enqueue a step that is still running)."""


class UnitFailed(JobFailed):
    """The job cannot go on; the message says why (it becomes the job's message)."""
