"""One strict base model: unknown fields are errors, so a typo in a job spec is a 422, not a silent default."""

import types
import typing
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator

MAX_INT = 2**53  # the largest integer a request may carry: exact in every JSON client (a double), in int64 and Redis


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, str_strip_whitespace=True)


def _numeric(annotation: Any) -> bool:
    """Does the field take a number (and not a boolean)? ``int | None``, ``Annotated[float, ...]``: yes."""
    if annotation in (int, float):
        return True
    if annotation is bool:
        return False
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _numeric(args[0])
    if origin in (typing.Union, types.UnionType):
        return any(_numeric(a) for a in args) and bool not in args
    return False


class RequestModel(StrictModel):
    """What a client sends. Besides unknown fields, a JSON ``true`` where the document says number is an error:
    pydantic's lax mode would read it as 1 (boolean fields, for their part, are ``StrictBool``: no 0 or "yes")."""

    _numeric_fields: ClassVar[dict[type, frozenset[str]]] = {}

    @model_validator(mode="before")
    @classmethod
    def _no_boolean_for_a_number(cls, data: Any) -> Any:
        """(A model validator: a field validator for every field would also touch a union's discriminator.)"""
        if isinstance(data, dict):
            numeric = RequestModel._numeric_fields.get(cls)
            if numeric is None:
                numeric = frozenset(n for n, f in cls.model_fields.items() if _numeric(f.annotation))
                RequestModel._numeric_fields[cls] = numeric
            wrong = [k for k, v in data.items() if isinstance(v, bool) and k in numeric]
            if wrong:
                raise ValueError(f"{wrong[0]}: a boolean where a number belongs")
        return data
