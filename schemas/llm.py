"""OpenAI-compatible chat shapes: what the LLM client sends and what the recipes get back."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from schemas.base import RequestModel, StrictModel

Role = Literal["system", "user", "assistant"]


class ChatMessage(StrictModel):
    role: Role
    content: str


class Usage(StrictModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    retries: int = 0
    rate_limited: int = 0

    def add(self, other: "Usage") -> "Usage":
        return Usage.model_construct(**{k: getattr(self, k) + getattr(other, k) for k in _USAGE_FIELDS})


_USAGE_FIELDS = tuple(Usage.model_fields)


class ChatResult(StrictModel):
    """One finished completion, after whatever retries it took."""

    content: str
    finish_reason: str | None = None
    model: str
    usage: Usage


class WireChoice(BaseModel):
    """Lenient: providers add fields freely, so responses are parsed with extra='ignore'."""

    model_config = ConfigDict(extra="ignore")
    message: dict[str, Any]
    finish_reason: str | None = None


class WireUsage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    prompt_tokens: int = 0
    completion_tokens: int = 0


class WireResponse(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = ""
    choices: list[WireChoice] = Field(min_length=1)
    usage: WireUsage | None = None


class RateLimits(StrictModel):
    rpm: int | None = None
    tpm: int | None = None


class EndpointLimitsPatch(RequestModel):
    """Limits set at run time for every worker (``PATCH /v1/endpoints/{name}``); ``null`` leaves one as it is."""

    rpm: int | None = Field(default=None, ge=1, le=100_000_000, description="requests per minute, fleet-wide")
    tpm: int | None = Field(default=None, ge=1, le=10_000_000_000, description="tokens per minute, fleet-wide")
    reset: StrictBool = Field(
        default=False, description="drop run-time and header-learned limits first (back to config)"
    )


class EndpointLimits(StrictModel):
    """What the fleet limiter applies to one endpoint now: the lowest of set-at-run-time (else configured) and
    learned from the provider's ``x-ratelimit-limit-*`` headers."""

    name: str
    model: str
    configured: RateLimits
    runtime: RateLimits
    learned: RateLimits
    effective: RateLimits
    cooldown_s: float = Field(description="seconds left of a 429 cool-down every worker honours")
