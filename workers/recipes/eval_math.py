"""Evaluate an endpoint on math questions (``skillmix eval-math``; papers.md §B "Evaluation facts").

Item i is question i of the job spec. The job's endpoint solves it (``workers/math/templates/v1/eval_solve``,
asking for a final ``\\boxed{}``); the final answer (last ``\\boxed{}``, else an "answer is" line) is compared
with the reference by math-verify in the worker's process pool (``Equivalence.equal``, never on the event
loop). With ``judge_endpoint`` set, a judge (``eval_judge``) also says whether the steps support the answer,
as the paper graded: correct = equivalent and (no judge, or the judge found the steps valid). A missing final
answer is simply wrong (no redraw: an evaluation never retries a question until it passes). The grading
travels on the record as ``eval`` (``schemas.evaluation.EvalResult``).
"""

from typing import ClassVar

from schemas.answers import final_answer
from schemas.evaluation import EvalResult
from schemas.examples import GeneratedItem, WorkItem
from schemas.jobs import EvalMathJobSpec, JobRecord
from schemas.llm import ChatMessage, Usage
from schemas.sampling import derive_rng
from schemas.settings import EndpointSettings
from workers.lenient import json_object
from workers.llm.client import ChatClient
from workers.recipes.base import Recipe
from workers.recipes.math import equivalence, yes

JUDGE_MAX_TOKENS = 512
MAX_REASON_CHARS = 500


# The judge answers JSON: by schema where its endpoint supports one (``judge_json``), else as asked, read leniently.
JUDGE_SCHEMA: dict[str, object] = {
    "type": "object",
    "properties": {"steps_valid": {"type": "boolean"}, "reason": {"type": "string"}},
    "required": ["steps_valid", "reason"],
    "additionalProperties": False,
}


def read_verdict(content: str) -> tuple[bool | None, str]:
    """(steps valid?, reason) from the judge's answer; (None, why) when it cannot be read."""
    data = json_object(content)
    if data is None:
        return None, f"judge answer unparseable: {content[:120]!r}"
    lowered = {str(k).lower(): v for k, v in data.items()}
    verdict = yes(lowered.get("steps_valid", lowered.get("valid", lowered.get("verdict"))))
    reason = lowered.get("reason", "")
    return verdict, (reason if isinstance(reason, str) else str(reason)).strip()[:MAX_REASON_CHARS]


class EvalMathRecipe(Recipe):
    name: ClassVar[str] = "eval-math"
    template_version: ClassVar[str] = "v1"
    templates: ClassVar[tuple[str, ...]] = ("workers.math",)

    def __init__(self, record: JobRecord, endpoint_name: str, endpoint: EndpointSettings) -> None:
        super().__init__(record, endpoint_name, endpoint)
        assert isinstance(record.spec, EvalMathJobSpec)
        self.spec = record.spec

    def item(self, index: int, attempt: int = 0) -> WorkItem:
        return WorkItem(index=index, attempt=attempt, skills=list(self.spec.questions[index].skills))

    async def generate(self, item: WorkItem, llm: ChatClient) -> GeneratedItem:
        question = self.spec.questions[item.index]
        params = self.spec.params
        prompt = self._template("eval_solve").substitute(problem=question.problem)
        messages = [ChatMessage(role="user", content=prompt)]
        result = await llm.chat(
            messages,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            frequency_penalty=params.frequency_penalty,
            seed=derive_rng(self.spec.seed, item.index, item.attempt, "solve").getrandbits(31),
        )
        usage: Usage = result.usage
        conversation = [*messages, ChatMessage(role="assistant", content=result.content)]
        extracted = final_answer(result.content)
        equivalent = bool(extracted) and await equivalence().equal(question.answer, extracted)
        grading = EvalResult(
            id=question.id,
            reference=question.answer,
            extracted=extracted,
            equivalent=equivalent,
            finish_reason=result.finish_reason,
        )
        if self.spec.judge_endpoint and self.judge_llm is not None:
            judge_prompt = self._template("eval_judge").substitute(
                problem=question.problem, reference=question.answer, response=result.content
            )
            judged = await self.judge_llm.chat(
                [ChatMessage(role="user", content=judge_prompt)],
                max_tokens=JUDGE_MAX_TOKENS,
                temperature=0.0,
                seed=derive_rng(self.spec.seed, item.index, item.attempt, "judge").getrandbits(31),
                json_schema=JUDGE_SCHEMA if self.judge_json else None,
                schema_name="eval_judge",
            )
            usage = usage.add(judged.usage)
            grading.judge_verdict, grading.judge_reason = read_verdict(judged.content)
            grading.judge_endpoint = self.spec.judge_endpoint
        grading.correct = equivalent and (not self.spec.judge_endpoint or grading.judge_verdict is True)
        return self.record_for(
            item,
            instruction=question.problem,
            output=result.content,
            answer=extracted,
            usage=usage,
            conversation=conversation if self.spec.keep_conversation else [],
            eval=grading,
        )
