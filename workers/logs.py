"""Process logging: text or one JSON object per line (``SKILLMIX_LOG_FORMAT``), both carrying the job id.

``JOB_ID`` is a context variable: set while a chunk runs or the curate stage handles a job's entries, it is
inherited by every task those start, so any logger's line says which job it was about without passing ids
around. ``configure`` installs one stderr handler on the root logger for ``skillmix serve`` and ``worker``.
"""

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal, TextIO

import orjson

JOB_ID: ContextVar[str | None] = ContextVar("skillmix_job_id", default=None)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(job_tag)s: %(message)s"
QUIET_LOGGERS = ("httpx", "httpcore")


@contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Lines logged inside (and by tasks started inside) carry ``job_id``."""
    token = JOB_ID.set(job_id)
    try:
        yield
    finally:
        JOB_ID.reset(token)


class JobIdFilter(logging.Filter):
    """Copies the current job id onto each record (``job_id``, and ``job_tag`` for the text format)."""

    def filter(self, record: logging.LogRecord) -> bool:
        job_id = JOB_ID.get()
        record.job_id = job_id
        record.job_tag = f" [job {job_id}]" if job_id else ""
        return True


class JsonFormatter(logging.Formatter):
    """ts (UTC ISO 8601), level, logger, msg, job_id when known, exc when present: one line each for log
    shippers."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None) or JOB_ID.get()
        if job_id:
            line["job_id"] = job_id
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


def configure(
    log_format: Literal["text", "json"], level: str = "INFO", stream: TextIO | None = None
) -> logging.Handler:
    """Replace the root logger's handlers with one handler writing ``log_format`` to stderr (or ``stream``)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(JobIdFilter())  # a handler filter sees records of every logger that propagates here
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for chatty in QUIET_LOGGERS:  # one INFO line per HTTP request: noise, and CPU, at 100 calls/s
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))
    return handler
