"""Recipe registry: recipe name (the job spec's ``recipe`` field) -> implementation."""

from schemas.jobs import JobRecord
from schemas.settings import EndpointSettings
from workers.recipes.base import ParseFailure, Recipe
from workers.recipes.instruct import InstructRecipe
from workers.recipes.prompts import PromptsRecipe

REGISTRY: dict[str, type[Recipe]] = {
    InstructRecipe.name: InstructRecipe,
    PromptsRecipe.name: PromptsRecipe,
}


def recipe_for(record: JobRecord, endpoint_name: str, endpoint: EndpointSettings) -> Recipe:
    return REGISTRY[record.spec.recipe](record, endpoint_name, endpoint)


__all__ = ["REGISTRY", "ParseFailure", "Recipe", "recipe_for"]
