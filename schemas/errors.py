"""One root for every error of ours, so a caller catches one name and the API maps each branch in one handler.

    SkillmixError            500  root; ``status`` (HTTP) and ``code`` (stable, for machines) say what it means
     ├── BadInput            422  the request cannot be used as given; ``field`` names what to fix
     │    ├── TooLarge       413  an upload over the server's cap               (service.routes.extract)
     │    ├── UnknownEndpoint     an endpoint name nobody configured            (store.endpoints)
     │    ├── NoBatch             a batch job's endpoint without `batch: true`  (store.endpoints)
     │    └── DatasetError        the dataset cannot be used as given          (store.datasets)
     ├── Unauthorized        401  no key, a malformed header, an unknown or revoked key  (service.auth)
     ├── Forbidden           403  the key's role may not do this                 (service.auth)
     ├── NotFound            404  no such id or name (or another team's: the same answer)
     │    └── NoItem              a review item gone while it was written       (store.review)
     ├── Conflict            409  not possible in the current state; the message says why
     │    ├── Stale               a review write against an old version; carries the current item (store.review)
     │    ├── NotPaused           resume of a job that is not paused           (store.budget)
     │    ├── BudgetExhausted     resume of a job still at its budget           (store.budget)
     │    │    └── TeamBudgetExhausted  ... or while its team is at its day cap  (store.budget)
     │    └── JobExists           a job id already stored                       (store.quotas)
     ├── OverQuota           429  a team quota or the failed-authentication throttle; ``Retry-After``
     ├── Transient           503  retry later: the job store or an endpoint is away
     │    └── EndpointDown        the endpoint stopped answering               (workers.unit)
     ├── JobFailed           500  the job cannot go on; it ends failed with this message
     │    ├── ExtractFailed                                                    (workers.extract.phase)
     │    └── UnitFailed          a unit of work says its job cannot go on     (workers.unit)
     ├── AnswerUnusable      502  a model answered, but not usably: that item is rejected, the job goes on
     │    ├── ParseFailure                                                     (workers.recipes.base)
     │    ├── PairNotFound                                                     (workers.recipes.parse)
     │    ├── Unparseable                                                      (workers.extract.ask)
     │    └── JudgeAnswerInvalid                                               (workers.curate.judge)
     ├── LLMError            502  a call to an endpoint failed; its tree is in workers.llm.errors
     ├── Interrupted              control flow, never a failure: the work stops here and is taken up again
     │    ├── JobStopped          the job ended or paused: the call is refused before it is sent
     │    ├── WorkerDraining      this worker is stopping (SIGTERM): the work is handed back
     │    ├── JobResumed          a step still running when its paused job resumed (workers.unit)
     │    ├── Parked              batch mode: an item's request waits in a batch file (workers.batch.parker)
     │    └── WaitingOnBatch      batch mode: a unit's items wait on batch answers (workers.batch.parker)
     ├── NotTheRunner             an endpoint client built outside the runner (workers.llm.client)
     ├── LocalRedisError          the bundled Redis cannot be found or started  (service.local_redis)
     └── LocalLLMError            the local model server cannot start          (service.local_llm)
          └── LocalModelNotFoundError

The leaves stay in the modules that raise them; this module holds the root and the branches, which is all the
API's handler (``service.errors``) and the CLI need. Leaves that used to be a ``ValueError``, ``LookupError``
or ``RuntimeError`` still are (a second base), so an existing ``except ValueError`` (pydantic validators too)
still catches them. ``tests/test_errors.py`` checks that no other class of ours derives from ``Exception``.
"""

from typing import Any, ClassVar

from schemas.llm import Usage


class SkillmixError(Exception):
    """The root. ``status`` is the HTTP status the API answers with; ``code`` names the branch for machines."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def json_body(self) -> dict[str, Any]:
        """What the API answers: ``{"detail": message, "code": code}`` (not ``body``: LLMStatusError has one)."""
        return {"detail": str(self), "code": self.code}

    def headers(self) -> dict[str, str] | None:
        """Response headers the branch needs (``Retry-After``, ``WWW-Authenticate``)."""
        return None


class BadInput(SkillmixError):
    """Answered in FastAPI's own 422 shape, so a client reads one kind of validation error: the item's ``loc``
    is ``[where, field]`` and its ``type`` is ``code`` (``value_error``, what pydantic gives a validator's
    ValueError)."""

    status = 422
    code = "value_error"

    def __init__(self, message: str, field: str | None = None, *, where: str = "body") -> None:
        super().__init__(message)
        self.field, self.where = field, where

    def json_body(self) -> dict[str, Any]:
        loc = [self.where] if self.field is None else [self.where, self.field]
        return {"detail": [{"loc": loc, "msg": str(self), "type": self.code}]}


class TooLarge(BadInput):
    status = 413
    code = "too_large"


class Unauthorized(SkillmixError):
    """The request carries no usable key. The message says what is wrong with the header, never echoes it."""

    status = 401
    code = "unauthorized"

    def headers(self) -> dict[str, str] | None:
        return {"WWW-Authenticate": 'Bearer realm="skillmix"'}


class Forbidden(SkillmixError):
    status = 403
    code = "forbidden"


class OverQuota(SkillmixError):
    """Over a limit that frees up with time: the body names the quota, its limit and the current use."""

    status = 429
    code = "over_quota"

    def __init__(self, message: str, *, quota: str, limit: float, used: float, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.quota, self.limit, self.used, self.retry_after_s = quota, limit, used, retry_after_s

    def json_body(self) -> dict[str, Any]:
        return {**super().json_body(), "quota": self.quota, "limit": self.limit, "used": self.used}

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_after_s)}


class NotFound(SkillmixError):
    status = 404
    code = "not_found"


class Conflict(SkillmixError):
    status = 409
    code = "conflict"


class Transient(SkillmixError):
    """The same request may succeed later; the API adds ``Retry-After``."""

    status = 503
    code = "unavailable"
    retry_after_s: ClassVar[int] = 2

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_after_s)}


class JobFailed(SkillmixError):
    code = "job_failed"


class AnswerUnusable(SkillmixError):
    status = 502
    code = "answer_unusable"


class LLMError(SkillmixError):
    """Root of the LLM client's tree. ``retryable`` says whether the same request may succeed if sent again;
    ``usage`` what the failed call still cost."""

    status = 502
    code = "llm_error"
    retryable: bool = False
    usage: Usage | None = None


class Interrupted(SkillmixError):
    """Raised to unwind the work in hand; whoever started it catches it, so it never reaches a user."""

    code = "interrupted"
