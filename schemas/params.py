"""Sampling parameters and the spending cap: small models every spec base needs, in a module that imports nothing
of ours but ``schemas.base`` (``schemas.recipes`` names them in its spec protocol without an import cycle)."""

from pydantic import Field

from schemas.base import RequestModel


class GenerationParams(RequestModel):
    temperature: float = Field(default=0.7, ge=0, le=2)
    max_tokens: int = Field(default=2048, ge=16, le=32_768)
    top_p: float = Field(default=1.0, gt=0, le=1)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2, description="OpenAI-style; curbs repetition")


class JobBudget(RequestModel):
    """A job's spending cap: at it the job pauses (nothing is lost) until the cap is raised or it is resumed.
    Either limit may be absent (none); both count every call of the job, the judge's too."""

    max_cost_usd: float | None = Field(
        default=None, gt=0, le=1e9, description="US dollars, priced per call at its endpoint's usd_per_mtok_*"
    )
    max_tokens: int | None = Field(
        default=None, ge=1, le=10**15, description="prompt + completion tokens of every call of the job"
    )


class ExtractParams(RequestModel):
    """Sampling for extraction calls; low temperature because labels should be consistent, not creative."""

    temperature: float = Field(default=0.2, ge=0, le=2)
    max_tokens: int = Field(default=4096, ge=256, le=32_768, description="cap on any one answer")
    top_p: float = Field(default=1.0, gt=0, le=1)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
