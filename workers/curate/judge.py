"""The LLM judge (``quality.judge``): grade each generated pair against an explicit rubric.

papers.md §A has the generator critique its own answer as the person who asked (is it generic, does it
really use both skills). The judge asks the same questions of the *final* pair, on any configured endpoint
(a stronger model than the generator, typically), plus what the heuristic checks cannot see in a fluent,
well-structured answer: each of the k skills named and scored on its own (``skill:<name>``; their lowest is
``uses_all_skills``), facts and arithmetic, the request's explicit constraints (a word limit, a table, a
number of items), internal consistency, specificity to the request's particulars, no padding. Each criterion
is scored 1-5, plus a pass/fail verdict and a one-line reason, as JSON. Endpoints with JSON-schema output are
asked for it; elsewhere the answer is read leniently (fences and prose around the object are fine). An
answer that still cannot be read after one retry is a failing opinion ("judge answer unparseable"), never a
pass.

More than one opinion where it pays: ``n`` answers per endpoint (each its own seed) and several
``endpoints`` (``JudgePanel``), combined by ``all`` (every opinion passes) or ``majority`` (strictly more
than half pass; a tie fails); each opinion stays on the verdict. Where a known-good answer exists (MATH^2's
verified answer with an independent solve that reached it, a brought dataset's ``reference_column``) the
judge sees it as a reference.

It runs in the generate stage, on the job's metered client of each judge endpoint, so its calls go through
the same limits, are refused after a cancel and count in the job's ``llm_calls`` and tokens. The verdict
travels on the item (``GeneratedItem.judge``); ``JudgeCheck`` in ``quality/checks.py`` rejects on it and the
stored example keeps it.
"""

import asyncio
from collections.abc import Awaitable, Sequence
from string import Template
from typing import Any, TypeVar

from schemas.curation import JudgeSettings
from schemas.errors import AnswerUnusable
from schemas.examples import GeneratedItem, JudgeOpinion, JudgeVerdict, extras_of
from schemas.jobs import JobRecord, MathExtras
from schemas.llm import ChatMessage, ChatResult, Usage
from schemas.sampling import derive_rng
from workers.lenient import json_object
from workers.llm.client import ChatClient, LLMClient
from workers.llm.errors import LLMBadRequest
from workers.templates import load_template

TEMPLATE_VERSION = "v2"
# Every verdict's scores hold these (``uses_all_skills``: the lowest ``skill:<name>`` score, 5 with no skills),
# plus one ``skill:<name>`` per required skill.
CRITERIA = (
    "specific",
    "uses_all_skills",
    "answers_request",
    "correct",
    "follows_constraints",
    "consistent",
    "complete",
    "not_padded",
    "not_too_brief",
)
DERIVED = frozenset({"uses_all_skills"})
ASKED = tuple(c for c in CRITERIA if c not in DERIVED)  # what the judge scores besides the skills
SKILL_PREFIX = "skill:"
UNPARSEABLE = "judge answer unparseable"
MAX_REASON_CHARS = 300
MAX_REFERENCE_CHARS = 4000
T = TypeVar("T")
_PASS = frozenset({"pass", "passed", "accept", "accepted", "keep", "yes", "true", "good"})
_FAIL = frozenset({"fail", "failed", "reject", "rejected", "drop", "no", "false", "bad"})


def _int_object(names: Sequence[str]) -> dict[str, object]:
    return {
        "type": "object",
        "properties": {name: {"type": "integer"} for name in names},
        "required": list(names),
        "additionalProperties": False,
    }


def judge_schema(skills: Sequence[str] = ()) -> dict[str, object]:
    """The answer's JSON schema: the fixed criteria under "scores", one score per skill under "skills"."""
    props: dict[str, object] = {"scores": _int_object(ASKED)}
    if skills:
        props["skills"] = _int_object(list(dict.fromkeys(skills)))
    props |= {"verdict": {"type": "string", "enum": ["pass", "fail"]}, "reason": {"type": "string"}}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


JUDGE_SCHEMA = judge_schema()  # a pair with no required skills


def template(name: str) -> Template:
    return load_template("workers.curate", "judge", TEMPLATE_VERSION, name)


class JudgeAnswerInvalid(AnswerUnusable, ValueError):
    pass


def _key(value: object) -> str:
    return str(value).strip().lower().replace(" ", "_").replace("-", "_")


def _score(value: Any) -> int:
    if isinstance(value, bool):
        raise JudgeAnswerInvalid("a score is a boolean")
    if isinstance(value, str):
        value = value.strip().split("/")[0].strip()  # "4", "4/5"
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise JudgeAnswerInvalid(f"score {value!r} is not a number") from exc
    return min(5, max(1, round(number)))


def _verdict(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    word = str(value).strip().strip(".!").lower()
    if word in _PASS:
        return True
    if word in _FAIL:
        return False
    raise JudgeAnswerInvalid(f"verdict {value!r} is neither pass nor fail")


def parse_judgement(text: str, skills: Sequence[str] = ()) -> tuple[dict[str, int], bool, str]:
    """(scores per criterion, the judge's own pass/fail, its one-line reason); raises ``JudgeAnswerInvalid``.

    Lenient: code fences and prose around the object, criteria at the top level instead of under
    "scores", keys in any case or with spaces, scores as "4" or "4/5" (clamped to 1-5), verdicts as
    booleans or words (pass/accept/yes, fail/reject/no). A skill's score is read from "skills", or as
    ``skill:<name>`` or its bare name among the scores. Every criterion and every skill must be scored."""
    data = json_object(text)
    if data is None:
        raise JudgeAnswerInvalid("no JSON object")
    lowered = {_key(k): v for k, v in data.items()}
    raw = lowered.get("scores")
    pool = {_key(k): v for k, v in (raw if isinstance(raw, dict) else lowered).items()}
    per_skill = lowered.get("skills")
    skill_pool = {_key(k): v for k, v in per_skill.items()} if isinstance(per_skill, dict) else {}
    missing = [name for name in ASKED if name not in pool]
    scores = {name: _score(pool[name]) for name in ASKED if name in pool}
    for name in dict.fromkeys(skills):
        found = next((p[k] for p, k in ((skill_pool, name), (pool, SKILL_PREFIX + name), (pool, name)) if k in p), None)
        if found is None:
            missing.append(SKILL_PREFIX + name)
        else:
            scores[SKILL_PREFIX + name] = _score(found)
    if missing:
        raise JudgeAnswerInvalid(f"no score for {', '.join(missing)}")
    skill_scores = [v for k, v in scores.items() if k.startswith(SKILL_PREFIX)]
    scores["uses_all_skills"] = min(skill_scores) if skill_scores else 5
    if "verdict" not in lowered:
        raise JudgeAnswerInvalid("no verdict")
    passed = _verdict(lowered["verdict"])
    reason = " ".join(str(lowered.get("reason") or "").split())[:MAX_REASON_CHARS]
    return {c: scores[c] for c in CRITERIA} | {k: v for k, v in scores.items() if k not in CRITERIA}, passed, reason


def combine(opinions: Sequence[JudgeOpinion], rule: str) -> tuple[bool, dict[str, int]]:
    """(passed, scores) of several opinions: ``all`` passes when every opinion does, ``majority`` when strictly
    more than half do. Scores per criterion: the lowest under ``all``, the lower median under ``majority``
    (opinions that could not be read have none)."""
    passes = sum(o.verdict for o in opinions)
    passed = passes == len(opinions) if rule == "all" else passes * 2 > len(opinions)
    scored = [o.scores for o in opinions if o.scores]
    names = list(dict.fromkeys(name for s in scored for name in s))
    scores: dict[str, int] = {}
    for name in names:
        values = sorted(s[name] for s in scored if name in s)
        scores[name] = values[0] if rule == "all" else values[(len(values) - 1) // 2]
    return passed, scores


def verdict_of(opinions: Sequence[JudgeOpinion], settings: JudgeSettings, reference_used: bool = False) -> JudgeVerdict:
    """One verdict from the opinions (one opinion: that opinion, as before ensembles)."""
    usage = Usage()
    for o in opinions:
        usage = usage.add(o.usage)
    if len(opinions) == 1:
        (only,) = opinions
        return JudgeVerdict(
            scores=only.scores,
            verdict=only.verdict,
            reason=only.reason,
            model=only.model,
            endpoint=only.endpoint,
            template_version=TEMPLATE_VERSION,
            usage=usage,
            reference_used=reference_used,
        )
    passed, scores = combine(opinions, settings.combine)
    passes = sum(o.verdict for o in opinions)
    telling = next((o for o in opinions if o.verdict == passed), opinions[0])
    reason = f"{passes} of {len(opinions)} opinions passed ({settings.combine}); {telling.reason}"
    return JudgeVerdict(
        scores=scores,
        verdict=passed,
        reason=reason[:MAX_REASON_CHARS],
        model=",".join(dict.fromkeys(o.model for o in opinions if o.model)),
        endpoint=",".join(dict.fromkeys(o.endpoint for o in opinions if o.endpoint)),
        template_version=TEMPLATE_VERSION,
        usage=usage,
        opinions=list(opinions),
        combine=settings.combine,
        reference_used=reference_used,
    )


async def _gather(calls: Sequence[Awaitable[T]]) -> list[T]:
    """All opinions asked at once; the first exception (a stop, a parked batch line, a transport error) is
    raised only once every call has ended, so none is left running."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    done: list[T] = []
    for r in results:
        if isinstance(r, BaseException):
            raise r
        done.append(r)
    return done


class Judge:
    """Grades items of one job with one judge endpoint; ``judge`` never raises for a bad answer."""

    def __init__(
        self,
        record: JobRecord,
        settings: JudgeSettings,
        endpoint_name: str,
        model: str = "",
        json_schema: bool = False,
        seat: int = 0,
    ) -> None:
        self.record, self.settings = record, settings
        self.endpoint_name, self.model = endpoint_name, model
        self.json_schema, self.seat = json_schema, seat
        self.schema = JUDGE_SCHEMA if json_schema else None
        skill_set = record.skill_set
        self.descriptions = {s.name: s.description for s in skill_set.skills} if skill_set else {}
        self.query_types = {q.name: q.definition for q in skill_set.query_types} if skill_set else {}

    @classmethod
    def for_client(cls, record: JobRecord, settings: JudgeSettings, client: ChatClient, seat: int = 0) -> "Judge":
        """A judge for the worker's client of the judge endpoint (its name, model and JSON-schema support)."""
        if isinstance(client, LLMClient):
            return cls(record, settings, client.name, client.endpoint.model, client.endpoint.json_schema, seat)
        inner = getattr(client, "inner", None)  # a Recorder around the endpoint's client
        if isinstance(inner, LLMClient):
            return cls(record, settings, inner.name, inner.endpoint.model, inner.endpoint.json_schema, seat)
        return cls(record, settings, settings.endpoint or record.endpoint, seat=seat)

    def _context(self, item: GeneratedItem) -> str:
        lines = []
        if item.query_type:
            definition = self.query_types.get(item.query_type)
            lines.append(
                f"The request is of the query type {item.query_type}" + (f": {definition}" if definition else ".")
            )
        if item.skills:
            lines.append(f"A good response needs all {len(item.skills)} of these skills together:")
            for name in item.skills:
                description = self.descriptions.get(name)
                lines.append(f"- {name}" + (f": {description}" if description else ""))
        else:
            lines.append("No particular skills were required.")
        return "\n".join(lines) + "\n"

    def reference(self, item: GeneratedItem) -> tuple[str, str] | None:
        """(where it comes from, the known-good answer) for this item, or None."""
        if not self.settings.reference:
            return None
        column = self.settings.reference_column
        row = item.extras.get("source_row")
        if column and isinstance(row, dict):
            value = row.get(column)
            text = value if isinstance(value, str) else "" if value is None else str(value)
            if text.strip():
                return f"the dataset's reference answer (column {column})", text.strip()
        if item.recipe == "math":
            found = extras_of(item, MathExtras)
            if found.answer:
                history, lines = found.math, [f"Final answer: {found.answer}"]
                vote = history.vote if history is not None else None
                if history is not None and vote is not None and vote.votes:
                    group = next((g for g in vote.groups if len(g) == vote.votes), [])
                    lines[0] += f" (reached by {vote.votes} of {len(history.solves)} independent solutions)"
                    if group and group[0] < len(history.solves):
                        lines.append(f"One of those solutions:\n{history.solves[group[0]].response.strip()}")
                return "the verified answer of this question", "\n".join(lines)
        return None

    def messages(self, item: GeneratedItem) -> list[ChatMessage]:
        skills = list(dict.fromkeys(item.skills))
        found = self.reference(item)
        reference = ""
        if found is not None:
            source, text = found
            reference = (
                f"\nA known-good answer to this request ({source}):\n<reference>\n"
                f"{text[:MAX_REFERENCE_CHARS]}\n</reference>\n"
                "Check the response's facts, figures and final result against it: a response that disagrees "
                "with it is wrong unless you can show the reference is; it need not match it word for word.\n"
            )
        skill_rubric = ""
        if skills:
            skill_rubric = (
                '\nAnd for each required skill, under "skills", 1 to 5: does the response visibly apply it '
                "(its methods, facts or craft, not merely its name), together with the others, in a way that "
                "serves this request? A skill left out scores 1.\n"
            )
        scores = ", ".join(f'"{name}": <1-5>' for name in ASKED)
        answer = '{"scores": {' + scores + "}"
        if skills:
            answer += ', "skills": {' + ", ".join(f'"{name}": <1-5>' for name in skills) + "}"
        answer += ', "verdict": "pass" or "fail", "reason": "<one line>"}'
        prompt = template("grade").substitute(
            instruction=item.instruction.strip() + (f"\n\n{item.input.strip()}" if item.input.strip() else ""),
            response=item.output.strip(),
            reference=reference,
            context=self._context(item),
            skill_rubric=skill_rubric,
            answer_format=answer,
        )
        return [
            ChatMessage(role="system", content=template("system").template.strip()),
            ChatMessage(role="user", content=prompt),
        ]

    def seed(self, item: GeneratedItem, opinion: int, attempt: int) -> int:
        """The first opinion of the first endpoint keeps the single judge's seed; every other its own."""
        where: tuple[int, ...] = (attempt,) if (self.seat, opinion) == (0, 0) else (self.seat, opinion, attempt)
        return derive_rng(self.record.spec.seed, item.index, item.attempts, "judge", *where).getrandbits(31)

    def _opinion(
        self, scores: dict[str, int], passed: bool, reason: str, usage: Usage, model: str, seed: int
    ) -> JudgeOpinion:
        return JudgeOpinion(
            scores=scores,
            verdict=passed,
            reason=reason,
            model=model or self.model,
            endpoint=self.endpoint_name,
            seed=seed,
            usage=usage,
        )

    async def opinion(self, item: GeneratedItem, llm: ChatClient, number: int = 0) -> JudgeOpinion:
        """One opinion: at most two calls (the second only if the first answer could not be read).

        Transport errors other than a refused request (``LLMBadRequest``, e.g. a pair too long for the
        judge's context) propagate: the caller treats them like the generator's."""
        messages, usage, model = self.messages(item), Usage(), ""
        schema = judge_schema(item.skills) if self.json_schema else None
        first_seed = self.seed(item, number, 0)
        for attempt in range(2):
            seed = self.seed(item, number, attempt)
            try:
                result: ChatResult = await llm.chat(
                    messages,
                    max_tokens=self.settings.max_tokens,
                    temperature=self.settings.sampling_temperature(),
                    seed=seed,
                    json_schema=schema,
                    schema_name="judge",
                )
            except LLMBadRequest as exc:
                usage = usage.add(exc.usage or Usage())
                reason = f"judge request refused: {exc}"[:MAX_REASON_CHARS]
                return self._opinion({}, False, reason, usage, model, first_seed)
            usage, model = usage.add(result.usage), result.model
            try:
                scores, passed, reason = parse_judgement(result.content, item.skills)
            except JudgeAnswerInvalid:
                messages = [
                    *messages,
                    ChatMessage(role="assistant", content=result.content),
                    ChatMessage(role="user", content=template("retry").template.strip()),
                ]
                continue
            low = [f"{name} {score}" for name, score in scores.items() if score < self.settings.min_score]
            if passed and low:
                passed = False
                reason = f"scored below {self.settings.min_score}: {', '.join(low)}" + (f"; {reason}" if reason else "")
            return self._opinion(scores, passed, reason or ("pass" if passed else "fail"), usage, model, first_seed)
        return self._opinion({}, False, UNPARSEABLE, usage, model, first_seed)

    async def opinions(self, item: GeneratedItem, llm: ChatClient) -> list[JudgeOpinion]:
        """``settings.n`` opinions of this endpoint, asked at once."""
        return await _gather([self.opinion(item, llm, j) for j in range(self.settings.n)])

    async def judge(self, item: GeneratedItem, llm: ChatClient) -> JudgeVerdict:
        """Grade one pair: ``n`` opinions of this endpoint, combined by ``settings.combine``."""
        return verdict_of(await self.opinions(item, llm), self.settings, self.reference(item) is not None)


class JudgePanel:
    """Every judge endpoint of a job (``endpoints``, or the one), each on its own metered client."""

    def __init__(self, seats: Sequence[tuple[Judge, ChatClient]], settings: JudgeSettings) -> None:
        assert seats, "a panel needs a judge"
        self.seats, self.settings = list(seats), settings
        self.endpoint_name = ",".join(judge.endpoint_name for judge, _ in self.seats)

    @classmethod
    def for_clients(
        cls, record: JobRecord, settings: JudgeSettings, clients: Sequence[tuple[ChatClient, ChatClient]]
    ) -> "JudgePanel":
        """(the endpoint's client, the client to call it through: metered, replaying) per judge endpoint."""
        seats = [(Judge.for_client(record, settings, base, i), calls) for i, (base, calls) in enumerate(clients)]
        return cls(seats, settings)

    async def judge(self, item: GeneratedItem) -> JudgeVerdict:
        found = await _gather([judge.opinions(item, llm) for judge, llm in self.seats])
        opinions = [o for seat in found for o in seat]
        return verdict_of(opinions, self.settings, self.seats[0][0].reference(item) is not None)
