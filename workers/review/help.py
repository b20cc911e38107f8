"""LLM help on a review item (papers.md §B step 6: "make the second skill necessary", "re-solve after my
edit"), run as the math recipe's help unit (``HelpTask``, registered below) on the job runner
(``workers.runner``).

The calls take the runner's metered path (``workers.meter``), so they land in the job's
``llm_calls``, tokens and cost like the generation calls did, and each answer is kept: a rerun of the request
(its worker was killed) replays it instead of paying again. A finished job may still be helped (metering
without the stop-on-finish refusal). The answer is stored as a ``Suggestion`` on the item,
a new version by ``llm``: the item's problem, solution and answer are never changed here.

- ``resolve``: ``n_solves`` independent solves of the item's *current* problem with the recipe's own solve
  prompt, voted with math-verify equivalence; the majority answer is proposed.
- ``check_edit``: is the current problem / solution / answer consistent? (reasoning, then Yes/No)
- ``make_skill_necessary``: a revised problem (with solution and answer) that needs the named skill.
"""

import logging
from typing import Any

from redis.asyncio import Redis

from schemas.llm import ChatResult
from schemas.review import HelpTask, ReviewItem, Suggestion
from schemas.sampling import derive_rng
from store import review as review_store
from store.endpoints import UnknownEndpoint
from workers.llm.client import ChatClient
from workers.llm.errors import LLMError
from workers.llm.replay import item_scope
from workers.meter import job_llm, replay_cache
from workers.recipes.math import SCHEMAS, MathRecipe, clean_answer, equivalence, read_fields, text, yes
from workers.unit import Resources, register_units

log = logging.getLogger(__name__)
MAX_WRITE_TRIES = 50


async def _call(
    recipe: MathRecipe, llm: ChatClient, prompt: str, stage: str, seed_parts: tuple[object, ...]
) -> ChatResult:
    params = recipe.spec.params
    return await llm.chat(
        recipe._messages(prompt),
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        frequency_penalty=params.frequency_penalty,
        seed=derive_rng(*seed_parts).getrandbits(31),
        json_schema=SCHEMAS[stage] if recipe.json else None,
        schema_name=f"math_help_{stage}",
    )


async def run(recipe: MathRecipe, llm: ChatClient, item: ReviewItem, s: Suggestion) -> Suggestion:
    """Fill ``s`` (text, proposed fields, calls made) from the LLM's answer."""
    note = s.note or "(none)"
    if s.kind == "resolve":
        prompt = recipe._template("solve").substitute(question=item.problem, format=recipe._format("solve"))
        n = recipe.spec.n_solves
        answers = []
        for i in range(n):
            result = await _call(recipe, llm, prompt, "solve", ("review-help", s.id, "solve", i))
            answers.append(clean_answer(read_fields(result.content).get("answer")))
        s.llm_calls = n
        eq = equivalence()
        vote = await eq.vote(answers)
        if vote.answer is None:
            s.text = f"No strict majority over {n} independent solves; their answers: {answers}"
            return s
        agrees = bool(item.answer) and await eq.equal(item.answer, vote.answer)
        s.text = (
            f"{vote.votes} of {n} independent solves agree on {vote.answer}; the item's answer {item.answer!r} "
            + ("agrees." if agrees else "differs.")
        )
        s.proposed = {"answer": vote.answer}
        return s
    if s.kind == "check_edit":
        prompt = recipe._template("help_check_edit").substitute(
            problem=item.problem,
            solution=item.solution,
            answer=item.answer,
            note=note,
            format=recipe._format("validate"),
        )
        result = await _call(recipe, llm, prompt, "validate", ("review-help", s.id, "check"))
        s.llm_calls = 1
        data = read_fields(result.content)
        verdict = yes(data.get("verdict"))
        label = "consistent" if verdict else "not consistent" if verdict is False else "no clear verdict"
        s.text = f"Check: {label}. {text(data.get('reasoning')) or result.content.strip()}"
        return s
    a, b = [*item.skills, "", ""][:2]
    skill = s.skill or b
    fields = (
        recipe._skill_fields([a, b])
        if a in recipe.skills and b in recipe.skills
        else {"skill_a": a, "skill_b": b, "exemplars_a": "", "exemplars_b": ""}
    )
    prompt = recipe._template("help_make_skill_necessary").substitute(
        **fields,
        skill=skill,
        problem=item.problem,
        solution=item.solution,
        answer=item.answer,
        note=note,
        format=recipe._format("question"),
    )
    result = await _call(recipe, llm, prompt, "question", ("review-help", s.id, "skill"))
    s.llm_calls = 1
    data = read_fields(result.content)
    proposed = {
        "problem": text(data.get("question")),
        "solution": text(data.get("solution")),
        "answer": clean_answer(data.get("answer")),
    }
    s.proposed = {k: v for k, v in proposed.items() if v}
    s.text = f"A revision meant to make {skill!r} necessary." if s.proposed else result.content.strip()[:4000]
    return s


async def add_suggestion(redis: Redis, job_id: str, item_id: str, s: Suggestion) -> bool:
    """Append ``s`` to the item as a new version by ``llm`` (retried past concurrent reviewers' writes);
    False if it is already there (a retried arq job) or the item is gone."""
    for _ in range(MAX_WRITE_TRIES):
        item = await review_store.get(redis, job_id, item_id)
        if item is None or any(x.id == s.id for x in item.suggestions):
            return False
        try:
            await review_store.change(
                redis,
                item,
                item.version,
                "llm",
                "suggestion",
                {"suggestions": [*item.suggestions, s]},
                suggestion_id=s.id,
            )
            return True
        except review_store.Stale:
            continue
    raise RuntimeError(f"could not store suggestion {s.id} on {item_id}: too many concurrent writes")


async def run_unit(ctx: dict[str, Any], task: HelpTask, final_try: bool) -> dict[str, Any]:
    """One help request: its suggestion is stored on the item, failed or not (a failure is the answer)."""
    redis: Redis = ctx["redis"]
    res: Resources = ctx["resources"]
    s = Suggestion(id=task.suggestion_id, kind=task.help, requested_by=task.by, skill=task.skill, note=task.note)
    item = await review_store.get(redis, task.job_id, task.item_id)
    if item is None or any(x.id == s.id for x in item.suggestions):
        return {"stored": False}
    found = await res.recipe(task.job_id)
    record, recipe = found if found is not None else (None, None)
    replay = None
    if record is None or not isinstance(recipe, MathRecipe):
        s.status, s.text = "failed", f"job {task.job_id} is not a math job"
    else:
        try:
            replay = await replay_cache(res, redis, task.job_id, f"help-{task.suggestion_id}")
            llm = await job_llm(res, record, replay, refuse_when_finished=False)
            with item_scope(0, "help"):
                s = await run(recipe, llm, item, s)
        except (LLMError, UnknownEndpoint) as exc:
            log.warning("review help %s on %s failed: %s", s.id, task.item_id, exc)
            s.status, s.text = "failed", f"the endpoint failed: {exc}"[:2000]
    stored = await add_suggestion(redis, task.job_id, task.item_id, s)
    if replay is not None:
        replay.drop()  # the answer is on the item: nothing of this request is asked again
    return {"stored": stored}


register_units(MathRecipe.name, help=run_unit)  # the runner finds the math recipe's help requests here
