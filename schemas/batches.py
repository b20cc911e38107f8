"""Provider batch mode's records: a request line, a batch we track, and a job's batch progress.

A batch job's metered calls do not go out: each becomes a ``RequestLine`` in the job's open file for its
endpoint; files are submitted to the endpoint's ``/v1/batches`` and tracked as ``BatchRecord`` in Redis
(``store.batches``), polled by any live worker (``workers.batch``).
"""

from typing import Any, Literal

from pydantic import Field

from schemas.base import StrictModel

BatchStatus = Literal[
    "new",  # lines taken, nothing sent yet
    "uploading",  # its file is being uploaded / its batch created (a crash here is recovered by metadata)
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
    "done",  # its outcome is applied: answers kept, retries queued, failures recorded
]
OPEN_AT_PROVIDER = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
FINISHED_AT_PROVIDER = frozenset({"completed", "expired", "cancelled", "failed"})


class RequestLine(StrictModel):
    """One line of a batch input file (OpenAI's format)."""

    custom_id: str = Field(min_length=1)
    method: Literal["POST"] = "POST"
    url: str = "/v1/chat/completions"
    body: dict[str, Any]


class BatchRecord(StrictModel):
    """One batch file of one job and endpoint, as tracked in ``batch:{id}``."""

    id: str
    job_id: str
    endpoint: str
    status: BatchStatus = "new"
    lines: int = 0
    round: int = 0
    created_ms: int = 0
    submitted_ms: int = 0
    provider_id: str = ""
    input_file_id: str = ""
    output_file_id: str = ""
    error_file_id: str = ""
    worst_micro_usd: int = Field(default=0, description="the budget reserved for it: every line at max_tokens")
    worst_tokens: int = 0
    resubmits: int = Field(default=0, description="times a failed validation was retried (at most once)")
    cancel_sent: bool = False
    completed_lines: int = 0
    failed_lines: int = 0
    message: str = ""


class BatchProgress(StrictModel):
    """A batch job's batches, as its status shows them."""

    open_batches: int = Field(default=0, description="batch files submitted (or being submitted), not yet applied")
    lines_waiting: int = Field(default=0, description="requests waiting for an answer: gathering or in open batches")
    lines_gathering: int = Field(default=0, description="requests waiting for their file to be submitted")
    lines_submitted: int = Field(default=0, description="request lines sent in batch files (resubmits included)")
    rounds: int = Field(default=0, description="gathering rounds submitted: a 5-turn conversation takes about 5")
    batches_done: int = 0
    oldest_open_s: float | None = Field(default=None, description="how long the oldest open batch has been open")
