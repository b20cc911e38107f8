"""Recipe registry: recipe name (the job spec's ``recipe`` field) -> implementation."""

from schemas.jobs import CurateJobSpec, JobRecord
from schemas.settings import EndpointSettings
from workers.recipes.base import ParseFailure, Recipe
from workers.recipes.curate import NO_ENDPOINT, CurateRecipe, NoLLM
from workers.recipes.eval_math import EvalMathRecipe
from workers.recipes.instruct import InstructRecipe
from workers.recipes.math import MathRecipe
from workers.recipes.prompts import PromptsRecipe
from workers.recipes.shirk import ShirkRecipe

REGISTRY: dict[str, type[Recipe]] = {
    InstructRecipe.name: InstructRecipe,
    MathRecipe.name: MathRecipe,
    PromptsRecipe.name: PromptsRecipe,
    ShirkRecipe.name: ShirkRecipe,
    CurateRecipe.name: CurateRecipe,
    EvalMathRecipe.name: EvalMathRecipe,
}


def recipe_for(record: JobRecord, endpoint_name: str, endpoint: EndpointSettings) -> Recipe:
    return REGISTRY[record.spec.recipe](record, endpoint_name, endpoint)


def needs_endpoint(record: JobRecord) -> bool:
    """Whether the job calls an LLM: a curate job without a judge reads its rows and calls nothing, so it runs
    with no endpoint configured (``NO_ENDPOINT``, ``NoLLM``)."""
    spec = record.spec
    return not (isinstance(spec, CurateJobSpec) and (spec.quality.judge is None or not spec.quality.enabled))


__all__ = ["NO_ENDPOINT", "REGISTRY", "NoLLM", "ParseFailure", "Recipe", "needs_endpoint", "recipe_for"]
