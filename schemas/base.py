"""One strict base model: unknown fields are errors, so a typo in a job spec is a 422, not a silent default."""

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, str_strip_whitespace=True)
