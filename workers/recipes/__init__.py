"""Recipe registry: recipe name (the job spec's ``recipe`` field) -> implementation."""

from schemas.jobs import JobRecord
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


__all__ = ["NO_ENDPOINT", "REGISTRY", "NoLLM", "ParseFailure", "Recipe", "recipe_for"]
