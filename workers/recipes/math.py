"""MATH^2 generation (papers.md §B): hard two-skill math questions, each with one verified answer.

One item is one skill pair run through a chain of stages, every prompt, answer and verdict kept on the item
(``schemas.math.MathHistory``), accepted or rejected:

1. pair validation with each skill's exemplars; a pair found invalid is added to the skill set's
   invalid-pair memory in Redis (``keys.invalid_pairs``), shared by every worker and later job, and the
   item is rejected (``invalid_pair``). The memory is consulted *before* the call: a known-invalid pair is
   redrawn deterministically (seed, index, attempt, redraw number) without any call;
2. a question needing both skills, with a brief solution and one exact answer, reviewed in the same
   conversation for up to ``max_question_turns`` turns until the model judges it solvable and not frustrating;
3. a sceptical ("defeatist") attempt hunting for flaws, shown to the validators;
4. ``n_validations`` rubric validations (reasoning, then Yes/No); no strict majority of Yes -> ``rubric_failed``;
5. ``n_solves`` independent solves; their answers are voted with ``Equivalence.vote`` (math-verify, in a
   process pool): no strict majority -> ``no_majority``; a majority not equal to the question's own answer
   -> ``answer_mismatch``.

Prompt templates are versioned files (``workers/math/templates/v1/``); the version is on every record.
"""

import asyncio
import re
from typing import Any, ClassVar

from redis.asyncio import Redis

from schemas.examples import GeneratedItem, Reason, WorkItem
from schemas.jobs import JobRecord, MathJobSpec
from schemas.llm import ChatMessage, ChatResult, Usage
from schemas.math import MathHistory, PairCheck, QuestionTurn, ScepticAttempt, Solve, Validation, VoteResult
from schemas.sampling import derive_rng
from schemas.settings import EndpointSettings
from store import keys
from workers.lenient import json_object
from workers.llm.client import ChatClient
from workers.math.equivalence import Equivalence
from workers.recipes.base import ParseFailure, Recipe
from workers.sampler import SkillSampler

MAX_PAIR_REDRAWS = 20  # known-invalid pairs skipped for one item before it gives up (no call is made)
EXEMPLARS = 3  # exemplars shown per skill
EXEMPLAR_CHARS = 600

_STRING = {"type": "string"}
_BOOL = {"type": "boolean"}


def _object(**props: dict[str, Any]) -> dict[str, object]:
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


SCHEMAS: dict[str, dict[str, object]] = {
    "pair": _object(reasoning=_STRING, valid=_BOOL),
    "question": _object(question=_STRING, solution=_STRING, answer=_STRING),
    "review": _object(critique=_STRING, solvable=_BOOL, question=_STRING, solution=_STRING, answer=_STRING),
    "sceptic": _object(flaws=_STRING, attempt=_STRING, answer=_STRING),
    "validate": _object(reasoning=_STRING, verdict={"type": "string", "enum": ["Yes", "No"]}),
    "solve": _object(solution=_STRING, answer=_STRING),
}

# --- the worker process's answer-equivalence pool: created on first use, closed at shutdown ----------------

_equivalence: Equivalence | None = None


def equivalence() -> Equivalence:
    global _equivalence
    if _equivalence is None:
        _equivalence = Equivalence()
    return _equivalence


def close_equivalence() -> None:
    global _equivalence
    if _equivalence is not None:
        _equivalence.close()
        _equivalence = None


def pair_key(skills: list[str]) -> str:
    """The invalid-pair memory's member for a pair: the names sorted, joined by '|'."""
    return "|".join(sorted(skills))


# --- lenient reading of the stages' answers (JSON when asked for it, sectioned text otherwise) ------------

_SECTION = re.compile(
    r"^[ \t]*(?:\*\*)?(reasoning|verdict|question|solution|final answer|answer|critique|solvable|flaws|attempt)"
    r"(?:\*\*)?[ \t]*:(?:\*\*)?[ \t]*",
    re.I | re.M,
)
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*)\}")


def read_fields(text: str) -> dict[str, Any]:
    """The answer's fields: its JSON object, else its ``Name: value`` sections (lower-case keys)."""
    data = json_object(text)
    if data is not None:
        return {str(k).lower(): v for k, v in data.items()}
    found: dict[str, Any] = {}
    marks = list(_SECTION.finditer(text))
    for i, mark in enumerate(marks):  # (no sections at all, e.g. JSON cut off by max_tokens: nothing found)
        name = mark.group(1).lower().replace("final answer", "answer")
        found[name] = text[mark.end() : marks[i + 1].start() if i + 1 < len(marks) else len(text)].strip()
    if "answer" not in found and (boxed := _BOXED.findall(text)):
        found["answer"] = boxed[-1]
    return found


def yes(value: object) -> bool | None:
    """A verdict's truth: true/false, or the last Yes/No word in a string; None when there is none."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        words = re.findall(r"\b(yes|no|true|false|valid|invalid)\b", value.lower())
        if words:
            return words[-1] in ("yes", "true", "valid")
    return None


def text(value: object) -> str:
    return value.strip() if isinstance(value, str) else "" if value is None else str(value)


def clean_answer(value: object) -> str:
    answer = text(value)
    boxed = _BOXED.findall(answer)
    if boxed:
        answer = boxed[-1]
    return answer.strip().strip("$").strip()


class MathRecipe(Recipe):
    name: ClassVar[str] = "math"
    template_version: ClassVar[str] = "v1"
    templates: ClassVar[tuple[str, ...]] = ("workers.math",)

    @classmethod
    def close_process(cls) -> None:
        close_equivalence()  # the answer-comparison pool, if this process started one

    def __init__(self, record: JobRecord, endpoint_name: str, endpoint: EndpointSettings) -> None:
        super().__init__(record, endpoint_name, endpoint)
        assert isinstance(record.spec, MathJobSpec) and record.skill_set is not None
        self.spec = record.spec
        self.skill_names = [s.name for s in record.skill_set.skills]
        self.skills = {s.name: s for s in record.skill_set.skills}
        query_types = [q.name for q in record.skill_set.query_types]
        self.sampler = SkillSampler(self.skill_names, query_types, self.spec.k, self.spec.seed)  # as instruct draws
        self.invalid_key = keys.invalid_pairs(record.team, record.skill_set.ref)
        self.json = endpoint.json_schema
        self.redis: Redis | None = None

    async def prepare(self, redis: Redis, indexes: list[int]) -> None:
        self.redis = redis  # the invalid-pair memory lives in Redis, shared by every worker and job

    def _format(self, stage: str) -> str:
        return self._template(f"format_{stage}_{'json' if self.json else 'text'}").template.strip()

    def item(self, index: int, attempt: int = 0) -> WorkItem:
        return self._draw(index, attempt, 0)

    def _draw(self, index: int, attempt: int, redraw: int) -> WorkItem:
        """Redraw 0 is the sampler's own draw (the same as instruct's); later ones skip known-invalid pairs."""
        item = self.sampler.item(index, attempt)
        if redraw:
            skills = derive_rng(self.spec.seed, "skills", index, attempt, "redraw", redraw).sample(self.skill_names, 2)
            item = item.model_copy(update={"skills": skills})
        return item.model_copy(update={"query_type": None})

    def _exemplars(self, name: str) -> str:
        """The skill as the prompts show it: its description, then its worked exemplars (problem and solution,
        as extracted from MATH-format data) when it has them, else its plain examples."""
        skill = self.skills[name]
        lines = [f"Description: {skill.description}"] if skill.description else []
        for ex in skill.exemplars[:EXEMPLARS]:
            lines.append(f"Example problem: {ex.problem[:EXEMPLAR_CHARS]}")
            if ex.solution:
                lines.append(f"Example solution: {ex.solution[:EXEMPLAR_CHARS]}")
        if not skill.exemplars:
            lines += [f"Example: {ex[:EXEMPLAR_CHARS]}" for ex in skill.examples[:EXEMPLARS]]
        return "\n".join(lines) or "(no examples given)"

    def _skill_fields(self, pair: list[str]) -> dict[str, str]:
        a, b = pair
        return {"skill_a": a, "skill_b": b, "exemplars_a": self._exemplars(a), "exemplars_b": self._exemplars(b)}

    async def _call(
        self, llm: ChatClient, messages: list[ChatMessage], item: WorkItem, stage: str, i: int = 0
    ) -> ChatResult:
        params = self.spec.params
        seed = derive_rng(self.spec.seed, item.index, item.attempt, stage, i).getrandbits(31)
        return await llm.chat(
            messages,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            frequency_penalty=params.frequency_penalty,
            seed=seed,
            json_schema=SCHEMAS[stage] if self.json else None,
            schema_name=f"math_{stage}",
        )

    def _messages(self, prompt: str) -> list[ChatMessage]:
        return [
            ChatMessage(role="system", content=self._template("system").template.strip()),
            ChatMessage(role="user", content=prompt),
        ]

    async def _known_invalid(self, pair: list[str]) -> bool:
        return self.redis is not None and bool(await self.redis.sismember(self.invalid_key, pair_key(pair)))

    async def generate(self, item: WorkItem, llm: ChatClient) -> GeneratedItem:
        history = MathHistory(template_version=self.template_version)
        for redraw in range(MAX_PAIR_REDRAWS):
            candidate = self._draw(item.index, item.attempt, redraw)
            if not await self._known_invalid(candidate.skills):
                item = candidate
                break
            history.skipped_pairs.append(pair_key(candidate.skills))
        else:
            history.pair = item.skills
            history.pair_check = PairCheck(valid=False, cached=True, reasoning="every pair drawn is known invalid")
            return self.record_for(item, error=Reason.INVALID_PAIR, error_detail="known invalid pair", math=history)
        history.pair = list(item.skills)
        usage = Usage()
        conversation: list[ChatMessage] = []

        def finish(reason: Reason | None = None, detail: str = "", **fields: object) -> GeneratedItem:
            extra: dict[str, object] = {"error": reason, "error_detail": detail} if reason else {}
            return self.record_for(
                item,
                usage=usage,
                math=history,
                conversation=conversation if self.spec.keep_conversation else [],
                **extra,
                **fields,
            )

        def unparseable(stage: str, content: str) -> ParseFailure:
            detail = f"math {stage}: no usable answer in {content[:120]!r}"
            return ParseFailure(detail, usage, conversation, {"math": history.model_copy(deep=True)})

        # 1. pair validation
        fields = self._skill_fields(item.skills)
        prompt = self._template("pair").substitute(**fields, format=self._format("pair"))
        result = await self._call(llm, self._messages(prompt), item, "pair")
        usage = usage.add(result.usage)
        data = read_fields(result.content)
        valid = yes(data.get("valid", data.get("verdict")))
        if valid is None:
            raise unparseable("pair validation", result.content)
        history.pair_check = PairCheck(
            prompt=prompt, response=result.content, valid=valid, reasoning=text(data.get("reasoning"))
        )
        if not valid:
            if self.redis is not None:
                await self.redis.sadd(self.invalid_key, pair_key(item.skills))
            return finish(Reason.INVALID_PAIR, f"pair {pair_key(item.skills)} judged invalid")

        # 2. the question, reviewed in conversation until judged solvable and not frustrating
        conversation = self._messages(self._template("question").substitute(**fields, format=self._format("question")))
        turn_prompt = conversation[-1].content
        question = solution = answer = ""
        finish_reason: str | None = None
        for turn in range(self.spec.max_question_turns + 1):
            stage = "question" if turn == 0 else "review"
            result = await self._call(llm, conversation, item, stage, turn)
            usage = usage.add(result.usage)
            conversation = [*conversation, ChatMessage(role="assistant", content=result.content)]
            data = read_fields(result.content)
            solvable = yes(data.get("solvable")) if turn else None
            question = text(data.get("question")) or question
            solution = text(data.get("solution")) or solution
            answer = clean_answer(data.get("answer")) or answer
            finish_reason = result.finish_reason
            history.question_turns.append(
                QuestionTurn(
                    prompt=turn_prompt,
                    response=result.content,
                    question=question,
                    solution=solution,
                    answer=answer,
                    solvable=solvable,
                    critique=text(data.get("critique")),
                    finish_reason=result.finish_reason,
                )
            )
            if not (question and solution and answer):
                raise unparseable(stage, result.content)
            if solvable or turn == self.spec.max_question_turns:
                break
            turn_prompt = self._template("review").substitute(**fields, format=self._format("review"))
            conversation = [*conversation, ChatMessage(role="user", content=turn_prompt)]
        record_fields: dict[str, object] = {
            "instruction": question,
            "output": solution,
            "answer": answer,
            "finish_reason": finish_reason,
        }

        # 3. the sceptic's attempt
        prompt = self._template("sceptic").substitute(question=question, format=self._format("sceptic"))
        result = await self._call(llm, self._messages(prompt), item, "sceptic")
        usage = usage.add(result.usage)
        data = read_fields(result.content)
        history.sceptic = ScepticAttempt(
            prompt=prompt,
            response=result.content,
            flaws=text(data.get("flaws")),
            answer=clean_answer(data.get("answer")),
        )

        # 4. rubric validations, strict majority of Yes
        prompt = self._template("validate").substitute(
            **fields,
            question=question,
            solution=solution,
            answer=answer,
            sceptic=result.content,
            format=self._format("validate"),
        )
        history.validation_prompt = prompt
        results = await asyncio.gather(
            *(self._call(llm, self._messages(prompt), item, "validate", i) for i in range(self.spec.n_validations))
        )
        for result in results:
            usage = usage.add(result.usage)
            data = read_fields(result.content)
            verdict = yes(data.get("verdict"))
            history.validations.append(
                Validation(response=result.content, reasoning=text(data.get("reasoning")), verdict=bool(verdict))
            )
        passed = sum(v.verdict for v in history.validations)
        if passed * 2 <= len(history.validations):
            detail = f"{passed} of {len(history.validations)} validations said yes"
            return finish(Reason.RUBRIC_FAILED, detail, **record_fields)

        # 5. independent solves, strict majority vote on the final answer
        prompt = self._template("solve").substitute(question=question, format=self._format("solve"))
        history.solve_prompt = prompt
        results = await asyncio.gather(
            *(self._call(llm, self._messages(prompt), item, "solve", i) for i in range(self.spec.n_solves))
        )
        for result in results:
            usage = usage.add(result.usage)
            solved = clean_answer(read_fields(result.content).get("answer"))
            history.solves.append(Solve(response=result.content, answer=solved))
        eq = equivalence()
        vote = await eq.vote([s.answer for s in history.solves])
        history.vote = VoteResult(answer=vote.answer, votes=vote.votes, groups=vote.groups)
        if vote.answer is None:
            detail = f"largest group {vote.votes} of {len(history.solves)} answers"
            return finish(Reason.NO_MAJORITY, detail, **record_fields)
        history.vote.matches_question = await eq.equal(answer, vote.answer)
        if not history.vote.matches_question:
            detail = f"majority answer {vote.answer!r} ({vote.votes} of {len(history.solves)}) is not {answer!r}"
            return finish(Reason.ANSWER_MISMATCH, detail, **record_fields)
        return finish(None, "", **record_fields)
