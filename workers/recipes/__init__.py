"""Recipe registry: recipe name (the job spec's ``recipe`` field) -> implementation.

The built-ins are listed once, below; a plug-in module (named in ``SKILLMIX_RECIPES``, imported at worker
start by ``load``) registers its own with ``register_recipe``, next to its spec's ``register_spec``.
"""

from typing import TypeVar

from schemas.jobs import JobRecord
from schemas.recipes import SPECS, load_plugins
from schemas.settings import EndpointSettings
from workers.recipes.base import ParseFailure, Recipe
from workers.recipes.curate import NO_ENDPOINT, CurateRecipe, NoLLM
from workers.recipes.eval_math import EvalMathRecipe
from workers.recipes.instruct import InstructRecipe
from workers.recipes.judge_eval import JudgeEvalRecipe
from workers.recipes.math import MathRecipe
from workers.recipes.prompts import PromptsRecipe
from workers.recipes.shirk import ShirkRecipe

REGISTRY: dict[str, type[Recipe]] = {}


R = TypeVar("R", bound=type[Recipe])


def register_recipe(cls: R) -> R:
    """Register a recipe implementation under its ``name`` (usable as a class decorator); its spec must be
    registered (``schemas.recipes.register_spec``) under the same name."""
    if cls.name not in SPECS:
        raise ValueError(f"recipe {cls.name!r} has no registered spec (schemas.recipes.register_spec)")
    REGISTRY[cls.name] = cls
    return cls


for _builtin in (InstructRecipe, MathRecipe, PromptsRecipe, ShirkRecipe, CurateRecipe, EvalMathRecipe, JudgeEvalRecipe):
    register_recipe(_builtin)


def load(modules: str) -> list[str]:
    """Import the plug-in recipe modules (``Settings.recipes``) in this worker process."""
    return load_plugins(modules)


def close_process() -> None:
    """At worker shutdown: every recipe releases what it keeps per process."""
    for recipe in REGISTRY.values():
        recipe.close_process()


def recipe_for(record: JobRecord, endpoint_name: str, endpoint: EndpointSettings) -> Recipe:
    return REGISTRY[record.spec.recipe](record, endpoint_name, endpoint)


__all__ = [
    "NO_ENDPOINT",
    "REGISTRY",
    "NoLLM",
    "ParseFailure",
    "Recipe",
    "close_process",
    "load",
    "recipe_for",
    "register_recipe",
]
