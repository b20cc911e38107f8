"""The recipe registry's contract side: every job spec model, keyed by its ``recipe`` name, and the one
dispatching ``JobSpec`` type built from it.

A recipe's spec model subclasses ``RecipeSpec`` and calls ``register_spec`` (the built-ins do so in
``schemas.jobs`` / ``schemas.extract``; a plug-in module named in ``SKILLMIX_RECIPES`` does so when it is
imported). What shared code needs to know about a recipe (does it fall short, does it call an LLM, does it
have a review queue, is it run as phase steps, which fields it adds to a record) is asked of its spec here,
never by its name. This module imports nothing of ours but ``schemas.base``.
"""

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, NoReturn, Protocol, TypeVar, Union

from pydantic import (
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    TypeAdapter,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError

from schemas.base import RequestModel, StrictModel
from schemas.curation import DedupSettings, QualitySettings
from schemas.params import ExtractParams, GenerationParams, JobBudget
from schemas.skills import SkillSet, SkillSetCreate


class SubmitContext(Protocol):
    """What the API hands a spec's ``prepare_submit``: the storage it may read, without schemas importing the
    store or the service. Errors raised are ``SkillmixError``s (a bad field is ``InvalidInput``)."""

    data_dir: Path

    async def skill_set(self, ref: "str | SkillSetCreate", k: int) -> "SkillSet":
        """Resolve (or save, if inline) a skill set reference, checking it holds at least ``k`` skills."""
        ...

    async def finished_source(self, field: str, job_id: str, verb: str) -> int:
        """A finished job's accepted-example count (a 422 on ``field`` if unknown, unfinished or empty; ``verb``
        says what the job would do with them)."""
        ...

    async def endpoint(self, name: str, field: str) -> None:
        """Check that an endpoint is configured (a 422 on ``field`` if not)."""
        ...


@dataclass
class Prepared:
    """A spec after submit-time resolution: the spec as stored, and the skill set resolved for it."""

    spec: "RecipeSpec"
    skill_set: "SkillSet | None" = None


def _recipe_required(schema: dict[str, Any]) -> None:
    if "recipe" in schema.get("properties", {}) and "recipe" not in schema.setdefault("required", []):
        schema["required"].insert(0, "recipe")


class RecipeSpec(RequestModel):
    """Base of every job spec. Subclasses declare ``recipe: Literal["name"] = "name"`` and set the ClassVars
    that differ from these defaults."""

    # ``recipe`` has a default in each spec (``recipe: Literal["name"] = "name"``) but the dispatcher needs it
    # sent: the document says so, or a client reading it would leave it out and meet a 422.
    model_config = ConfigDict(json_schema_extra=_recipe_required)

    # Submitted through ``POST /v1/jobs`` (False: the recipe has its own route, e.g. extraction).
    via_jobs: ClassVar[bool] = True
    # A job that stops at its attempt budget "falls short" of ``count`` (False: every item is decided, as a
    # brought dataset's rows are).
    counts_shortfall: ClassVar[bool] = True
    # Accepted examples wait in a review queue; exports read the reviewed versions.
    has_review_queue: ClassVar[bool] = False
    # Run as a chain of phase steps (``store.stepped``, ``schemas.jobs.PhaseTask``) instead of item chunks.
    stepped: ClassVar[bool] = False
    # Items come from rows already at hand and go through the batched curate path (no per-item model calls).
    batched_curation: ClassVar[bool] = False
    # The fields this recipe adds to a record (``GeneratedItem`` / ``Example`` extras); None: none.
    record_extras: ClassVar[type[StrictModel] | None] = None
    # The job's examples can be the source of a job that reads them (a generation, not an extraction).
    has_examples: ClassVar[bool] = True

    mode: Literal["online", "batch"] = Field(
        default="online",
        description="online: each call is sent at once; batch: calls are gathered into provider batch files "
        "(OpenAI's Batch API, half price, answers within 24 h); every endpoint the job calls needs `batch: true`",
    )

    if TYPE_CHECKING:  # every recipe spec has these (read-only here: fields, or ClassVars fixed by a recipe)

        @property
        def recipe(self) -> str: ...

        @property
        def count(self) -> int: ...

        @property
        def seed(self) -> int: ...

        @property
        def endpoint(self) -> str | None: ...

        @property
        def params(self) -> GenerationParams | ExtractParams: ...

        @property
        def dedup(self) -> DedupSettings: ...

        @property
        def quality(self) -> QualitySettings: ...

        @property
        def item_retries(self) -> int: ...

        @property
        def chunk_size(self) -> int | None: ...

        @property
        def keep_conversation(self) -> bool: ...

        @property
        def budget(self) -> JobBudget | None: ...

        @property
        def item_budget(self) -> int: ...

    def needs_endpoint(self) -> bool:
        """Whether the job calls an LLM (a job that calls none runs with no endpoint configured)."""
        return True

    def extra_endpoints(self) -> dict[str, str]:
        """Other endpoints the job calls, by the spec field naming them: checked at submit."""
        judge = self.quality.judge if self.has_examples and self.quality.enabled else None
        if judge is None:
            return {}
        if judge.endpoints:
            return {f"quality.judge.endpoints[{i}]": name for i, name in enumerate(judge.endpoints)}
        return {"quality.judge.endpoint": judge.endpoint} if judge.endpoint else {}

    async def prepare_submit(self, ctx: SubmitContext) -> Prepared:
        """Submit-time resolution (a skill set, a source job's size ...): the spec as it will be stored."""
        return Prepared(self)


SPECS: dict[str, type[RecipeSpec]] = {}
S = TypeVar("S", bound=type[RecipeSpec])
"""Every registered recipe spec, by recipe name, in registration order."""


def recipe_name(cls: type[RecipeSpec]) -> str:
    name = cls.model_fields["recipe"].default
    assert isinstance(name, str), f"{cls.__name__} needs recipe: Literal[...] = <its name>"
    return name


def register_spec(cls: S) -> S:
    """Register a recipe's spec model under its ``recipe`` name (usable as a class decorator)."""
    name = recipe_name(cls)
    known = SPECS.get(name)
    if known is not None and known.__qualname__ != cls.__qualname__:
        raise ValueError(f"recipe {name!r} is registered twice ({known.__module__} and {cls.__module__})")
    SPECS[name] = cls
    _extra_names.clear()
    return cls


def load_plugins(modules: str) -> list[str]:
    """Import the plug-in recipe modules named (comma-separated, ``Settings.recipes``): importing one
    registers it. Returns the names imported; an unimportable name raises (a misconfigured process should
    not start)."""
    names = [m.strip() for m in modules.split(",") if m.strip()]
    for name in names:
        importlib.import_module(name)
    return names


def has_review_queue(recipe: str | None) -> bool:
    """Whether jobs of this recipe keep their accepted examples in a review queue."""
    spec = SPECS.get(recipe or "")
    return spec is not None and spec.has_review_queue


_extra_names: list[str] = []  # cache of ``extra_field_names``, cleared when a spec registers


def extra_field_names() -> list[str]:
    """Every registered recipe's record extras field, once each, in registration order: the keys every
    stored example carries (``null`` when not its recipe's), as the fixed fields did before recipes were
    plug-ins."""
    if not _extra_names:
        _extra_names.extend(dict.fromkeys(n for m in extras_models() for n in m.model_fields))
    return _extra_names


def extras_models() -> list[type[StrictModel]]:
    """Every registered recipe's record extras model, once each, in registration order."""
    out: list[type[StrictModel]] = []
    for spec in SPECS.values():
        if spec.record_extras is not None and spec.record_extras not in out:
            out.append(spec.record_extras)
    return out


def _specs(via_jobs: bool) -> dict[str, type[RecipeSpec]]:
    return {n: s for n, s in SPECS.items() if s.via_jobs or not via_jobs}


def _unknown(value: object, names: list[str]) -> NoReturn:
    """A missing or unknown recipe: the same error a discriminated union gives, listing the known names."""
    if value is None:
        raise PydanticCustomError(
            "union_tag_not_found",
            "Unable to extract tag using discriminator {discriminator}",
            {"discriminator": "'recipe'"},
        )
    raise PydanticCustomError(
        "union_tag_invalid",
        "Input tag '{tag}' found using {discriminator} does not match any of the expected tags: {expected_tags}",
        {"tag": str(value), "discriminator": "'recipe'", "expected_tags": ", ".join(f"'{n}'" for n in names)},
    )


def _dispatcher(via_jobs: bool) -> Any:
    def dispatch(value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> RecipeSpec:
        specs = _specs(via_jobs)
        if isinstance(value, RecipeSpec):
            if type(value) in specs.values():
                return value
            value = value.model_dump()
        if not isinstance(value, Mapping):  # what a discriminated union says
            raise PydanticCustomError(
                "model_attributes_type", "Input should be a valid dictionary or object to extract fields from"
            )
        name = value.get("recipe")
        if not isinstance(name, str) or name not in specs:
            _unknown(value.get("recipe"), list(specs))
        return specs[name].model_validate(value, context=info.context)

    return dispatch


class _RegistrySchema:
    """The JSON schema of a dispatching spec: one of the registered specs, told apart by ``recipe``; computed
    when the document is generated, so a recipe registered after the routes were defined is in it."""

    def __init__(self, via_jobs: bool) -> None:
        self.via_jobs = via_jobs

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        members = tuple(_specs(self.via_jobs).values())
        union: Any = Annotated[Union[members], Field(discriminator="recipe")] if len(members) > 1 else members[0]  # noqa: UP007
        return handler(TypeAdapter(union).core_schema)


if TYPE_CHECKING:
    JobSpec = RecipeSpec
    GenerationSpec = RecipeSpec
else:  # validated by the dispatcher, written as the spec's own class (``Any``: no base-class schema of its own)
    JobSpec = Annotated[Any, WrapValidator(_dispatcher(False)), _RegistrySchema(False)]
    GenerationSpec = Annotated[Any, WrapValidator(_dispatcher(True)), _RegistrySchema(True)]
# ``JobSpec``: every kind of stored job, any registered recipe's spec. ``GenerationSpec``: what ``POST /v1/jobs``
# accepts, the specs with ``via_jobs`` (extraction specs have their own route).
