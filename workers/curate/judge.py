"""The LLM judge (``quality.judge``): grade each generated pair against the rubric of the paper's critique turn.

papers.md §A has the generator critique its own answer as the person who asked (is it generic, does it
really use both skills). The judge asks the same questions of the *final* pair, on any configured endpoint
(a stronger model than the generator, typically): specific not generic, really uses all k skills, answers
what was asked, correct, complete without padding, not unjustifiably brief; each scored 1-5, plus a
pass/fail verdict and a one-line reason, as JSON. Endpoints with JSON-schema output are asked for it;
elsewhere the answer is read leniently (fences and prose around the object are fine). An answer that still
cannot be read after one retry fails the item ("judge answer unparseable").

It runs in the generate stage, on the job's metered client for the judge's endpoint, so its calls go
through the same limits, are refused after a cancel and count in the job's ``llm_calls`` and tokens. The
verdict travels on the item (``GeneratedItem.judge``); ``JudgeCheck`` in ``quality/checks.py`` rejects on it and
the stored example keeps it.
"""

from string import Template
from typing import Any

from schemas.curation import JudgeSettings
from schemas.errors import AnswerUnusable
from schemas.examples import GeneratedItem, JudgeVerdict
from schemas.jobs import JobRecord
from schemas.llm import ChatMessage, ChatResult, Usage
from schemas.sampling import derive_rng
from workers.lenient import json_object
from workers.llm.client import ChatClient, LLMClient
from workers.llm.errors import LLMBadRequest
from workers.templates import load_template

TEMPLATE_VERSION = "v1"
CRITERIA = ("specific", "uses_all_skills", "answers_request", "correct", "complete", "not_too_brief")
UNPARSEABLE = "judge answer unparseable"
MAX_REASON_CHARS = 300
_PASS = frozenset({"pass", "passed", "accept", "accepted", "keep", "yes", "true", "good"})
_FAIL = frozenset({"fail", "failed", "reject", "rejected", "drop", "no", "false", "bad"})

JUDGE_SCHEMA: dict[str, object] = {
    "type": "object",
    "properties": {
        "scores": {
            "type": "object",
            "properties": {name: {"type": "integer"} for name in CRITERIA},
            "required": list(CRITERIA),
            "additionalProperties": False,
        },
        "verdict": {"type": "string", "enum": ["pass", "fail"]},
        "reason": {"type": "string"},
    },
    "required": ["scores", "verdict", "reason"],
    "additionalProperties": False,
}


def template(name: str) -> Template:
    return load_template("workers.curate", "judge", TEMPLATE_VERSION, name)


class JudgeAnswerInvalid(AnswerUnusable, ValueError):
    pass


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


def parse_judgement(text: str) -> tuple[dict[str, int], bool, str]:
    """(scores per criterion, the judge's own pass/fail, its one-line reason); raises ``JudgeAnswerInvalid``.

    Lenient: code fences and prose around the object, criteria at the top level instead of under
    "scores", keys in any case or with spaces, scores as "4" or "4/5" (clamped to 1-5), verdicts as
    booleans or words (pass/accept/yes, fail/reject/no)."""
    data = json_object(text)
    if data is None:
        raise JudgeAnswerInvalid("no JSON object")
    lowered = {str(k).strip().lower().replace(" ", "_").replace("-", "_"): v for k, v in data.items()}
    raw = lowered.get("scores")
    pool = raw if isinstance(raw, dict) else lowered
    pool = {str(k).strip().lower().replace(" ", "_").replace("-", "_"): v for k, v in pool.items()}
    missing = [name for name in CRITERIA if name not in pool]
    if missing:
        raise JudgeAnswerInvalid(f"no score for {', '.join(missing)}")
    scores = {name: _score(pool[name]) for name in CRITERIA}
    if "verdict" not in lowered:
        raise JudgeAnswerInvalid("no verdict")
    passed = _verdict(lowered["verdict"])
    reason = " ".join(str(lowered.get("reason") or "").split())[:MAX_REASON_CHARS]
    return scores, passed, reason


class Judge:
    """Grades items of one job with one judge endpoint; ``judge`` never raises for a bad answer."""

    def __init__(
        self,
        record: JobRecord,
        settings: JudgeSettings,
        endpoint_name: str,
        model: str = "",
        json_schema: bool = False,
    ) -> None:
        self.record, self.settings = record, settings
        self.endpoint_name, self.model = endpoint_name, model
        self.schema = JUDGE_SCHEMA if json_schema else None
        skill_set = record.skill_set
        self.descriptions = {s.name: s.description for s in skill_set.skills} if skill_set else {}
        self.query_types = {q.name: q.definition for q in skill_set.query_types} if skill_set else {}

    @classmethod
    def for_client(cls, record: JobRecord, settings: JudgeSettings, client: ChatClient) -> "Judge":
        """A judge for the worker's client of the judge endpoint (its name, model and JSON-schema support)."""
        if isinstance(client, LLMClient):
            return cls(record, settings, client.name, client.endpoint.model, client.endpoint.json_schema)
        return cls(record, settings, settings.endpoint or record.endpoint)

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
            lines.append("No particular skills were required: score uses_all_skills 5.")
        return "\n".join(lines) + "\n"

    def messages(self, item: GeneratedItem) -> list[ChatMessage]:
        prompt = template("grade").substitute(
            instruction=item.instruction.strip(),
            response=item.output.strip(),
            context=self._context(item),
        )
        return [
            ChatMessage(role="system", content=template("system").template.strip()),
            ChatMessage(role="user", content=prompt),
        ]

    def _result(self, scores: dict[str, int], passed: bool, reason: str, usage: Usage, model: str) -> JudgeVerdict:
        return JudgeVerdict(
            scores=scores,
            verdict=passed,
            reason=reason,
            model=model or self.model,
            endpoint=self.endpoint_name,
            template_version=TEMPLATE_VERSION,
            usage=usage,
        )

    async def judge(self, item: GeneratedItem, llm: ChatClient) -> JudgeVerdict:
        """Grade one pair: at most two calls (the second only if the first answer could not be read).

        Transport errors other than a refused request (``LLMBadRequest``, e.g. a pair too long for the
        judge's context) propagate: the caller treats them like the generator's."""
        messages, usage, model = self.messages(item), Usage(), ""
        for attempt in range(2):
            seed = derive_rng(self.record.spec.seed, item.index, item.attempts, "judge", attempt).getrandbits(31)
            try:
                result: ChatResult = await llm.chat(
                    messages,
                    max_tokens=self.settings.max_tokens,
                    temperature=0.0,
                    seed=seed,
                    json_schema=self.schema,
                    schema_name="judge",
                )
            except LLMBadRequest as exc:
                usage = usage.add(exc.usage or Usage())
                return self._result({}, False, f"judge request refused: {exc}"[:MAX_REASON_CHARS], usage, model)
            usage, model = usage.add(result.usage), result.model
            try:
                scores, passed, reason = parse_judgement(result.content)
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
            return self._result(scores, passed, reason or ("pass" if passed else "fail"), usage, model)
        return self._result({}, False, UNPARSEABLE, usage, model)
