"""Every error the LLM client raises, in one tree, so callers catch our names and never httpx's.

    LLMError                      (schemas.errors, under SkillmixError) ``usage``: what the failed call cost
     ├── LLMTimeout               no complete answer within endpoint.timeout_s      (retried)
     ├── LLMConnectionError       connect/reset/protocol failure before an answer  (retried)
     ├── LLMMalformedResponse     200 whose body is not a usable completion         (retried)
     ├── LLMRateLimited           429; ``retry_after`` seconds                 (pause, retried)
     ├── LLMUnavailable           retries exhausted; the last cause is ``__cause__``
     └── LLMStatusError           any other non-2xx; ``status_code``, ``body``  (5xx retried)
          ├── LLMBadRequest       400/413/422: this item can never succeed, fail it at once
          └── LLMFatal            401/402/403/404 or no quota: the whole job cannot proceed
               └── LLMMissingKey  the endpoint's api_key_env variable is not set

httpx exceptions are translated in exactly one place, ``LLMClient._post``, chained with ``from``.
``JobStopped`` is not an ``LLMError`` but an ``Interrupted``: the call was refused before it was sent (the job
ended or paused).
"""

from schemas.errors import Interrupted
from schemas.errors import LLMError as LLMError  # the branch's root; importing it from here stays valid

BODY_EXCERPT_CHARS = 500
RETRYABLE_4XX = frozenset({408, 409, 425})  # request timeout, conflict, too early


class JobStopped(Interrupted):
    """The job is no longer queued or running: the call is refused before it is sent."""


class LLMTimeout(LLMError):
    retryable = True


class LLMConnectionError(LLMError):
    retryable = True


class LLMMalformedResponse(LLMError):
    retryable = True


class LLMRateLimited(LLMError):
    """Retried after an endpoint-wide pause, under its own larger allowance (storms are normal)."""

    retryable = True

    def __init__(self, retry_after: float, message: str = "rate limited") -> None:
        super().__init__(f"{message} (retry after {retry_after:.3f}s)")
        self.retry_after = retry_after


class LLMUnavailable(LLMError):
    """Raised ``from`` the last retryable error once the retry allowance is spent."""


class LLMStatusError(LLMError):
    def __init__(self, status_code: int, body: str, message: str | None = None) -> None:
        self.status_code = status_code
        self.body = body[:BODY_EXCERPT_CHARS]
        # server-side trouble may clear up; client-side mistakes never do
        self.retryable = status_code >= 500 or status_code in RETRYABLE_4XX
        super().__init__(message or f"HTTP {status_code}: {self.body}")


class LLMBadRequest(LLMStatusError):
    pass


class BatchLineFailed(LLMBadRequest):
    """A provider batch failed this request for good (or it ran out of tries): its item fails with the message."""


class LLMFatal(LLMStatusError):
    pass


class LLMMissingKey(LLMFatal):
    """Raised at client construction: failing before the first request names the variable to set."""

    def __init__(self, env_var: str) -> None:
        super().__init__(401, "", f"environment variable {env_var} (the endpoint's api_key_env) is not set")
        self.env_var = env_var
