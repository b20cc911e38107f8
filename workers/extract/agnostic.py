"""Model-only extraction (papers.md §A "-D"): topics, then skills per topic, then query types.

Each finished step's answer is stored before it is counted, so a redone step skips what is done. Names are
normalised (lower snake_case, deduplicated) and topic names are kept out of the skill list.

Honesty: a small model fills the answer's shape with the prompt's own scaffolding (``[topic1]``,
``<snake_case>``) or copies the prompt's example names (``persuasive_writing``). Such names are dropped,
each kind with its reason noted on the job; a set with fewer than ``MIN_SKILL_SHARE`` of the skills asked
for fails the job (unless the spec sets ``allow_shortfall``), and any shortfall is stated in the message.
"""

import re
from dataclasses import dataclass, field
from functools import cache
from typing import Literal

import orjson

from schemas.extract import PARSE_ATTEMPTS, ExtractAgnosticSpec
from schemas.skills import QueryType, Skill, SkillSetCreate
from workers.extract.answers import (
    QUERY_TYPES_SCHEMA,
    SKILLS_SCHEMA,
    TOPICS_SCHEMA,
    QueryTypesAnswer,
    SkillsAnswer,
    TopicsAnswer,
    skill_name,
)
from workers.extract.ask import Unparseable, render, template
from workers.extract.phase import ExtractFailed, Phase
from workers.llm.errors import LLMError

DEFAULT_DOMAIN = "instruction following (the requests people send to a general-purpose AI assistant)"
TOKENS_PER_NAME = 24
TOKENS_PER_SKILL = 80  # name plus a one-sentence description
TOKENS_PER_QUERY_TYPE = 160
QUERY_TYPE_EXAMPLES = 24  # dataset rows shown when asking a seeded set's query types
QUERY_TYPE_EXAMPLE_CHARS = 300

MIN_SKILL_SHARE = 0.5  # below this share of the skills asked for, the job fails unless allow_shortfall
LISTED_NAMES = 8  # dropped names quoted in a note, per reason

# Placeholder-like names: template scaffolding, not content. Bracketed or angled names ("[topic1]",
# "<skill>", "{name}"), ellipses, and generic words, alone or numbered or lettered ("topic_1", "skill2", "Skill A").
_WRAPPED = re.compile(r"^\s*(\[[^\]]*\]|<[^>]*>|\{[^}]*\})\s*$")
_GENERIC = re.compile(
    r"^(?:(?:example|sample|placeholder|dummy|generic|your|my|new|some|another|the)_)?"
    r"(?:topic|topics|skill|skills|ability|subject|area|category|item|entry|name|title|label|thing|"
    r"skill_name|topic_name|skill_title|topic_title|description|definition|snake_case|one_sentence|"
    r"placeholder|example|sample|tbd|todo|tba|xxx|lorem_ipsum|n_a|na|none|null|unknown)"
    r"(?:_?\d+|_[a-z])?$"
)
_TEMPLATE_EXAMPLE = re.compile(r"`([a-z][a-z0-9_]*)`")
_TEMPLATE_SLOT = re.compile(r"<([^<>/]+)>")
PROMPT_TEMPLATES = ("topics", "skills", "query_types", "label", "merge", "map")

DropReason = Literal["placeholder", "copied"]
REASON_TEXT: dict[DropReason, str] = {
    "placeholder": "as placeholders",
    "copied": "copied from the prompt's own examples",
}


@cache
def prompt_examples() -> frozenset[str]:
    """Skill names the prompt templates show as examples (``persuasive_writing`` ...): a model that answers
    with them has copied the prompt, not named a skill of the domain."""
    return frozenset(m for name in PROMPT_TEMPLATES for m in _TEMPLATE_EXAMPLE.findall(template(name).template))


@cache
def template_slots() -> frozenset[str]:
    """The templates' answer-shape slots (``<snake_case>``, ``<one sentence>``, ``<topic>``), normalised."""
    slots = [m for name in PROMPT_TEMPLATES for m in _TEMPLATE_SLOT.findall(template(name).template)]
    return frozenset(n for n in map(skill_name, slots) if n)


def drop_reason(raw: str, kind: Literal["topic", "skill", "query_type"]) -> DropReason | None:
    """Why a name the model gave is not a usable name, or None if it is one."""
    name = skill_name(raw)
    if name is None or _WRAPPED.match(raw):  # no letters or digits at all ("...", "-"), or bracketed
        return "placeholder"
    if name in template_slots() or _GENERIC.match(name):
        return "placeholder"
    if kind != "query_type" and name in prompt_examples():
        return "copied"
    return None


@dataclass
class Dropped:
    """Names dropped from one kind of answer: how many times per reason, and the distinct names met."""

    kind: str
    times: dict[DropReason, int] = field(default_factory=lambda: {"placeholder": 0, "copied": 0})
    names: dict[DropReason, list[str]] = field(default_factory=lambda: {"placeholder": [], "copied": []})

    def add(self, reason: DropReason, raw: str) -> None:
        self.times[reason] += 1
        if raw not in self.names[reason]:
            self.names[reason].append(raw)

    def count(self, reason: DropReason) -> int:
        return self.times[reason]

    def notes(self) -> list[str]:
        out = []
        for reason, names in self.names.items():
            if names:
                shown = ", ".join(repr(n) for n in names[:LISTED_NAMES])
                more = f" and {len(names) - LISTED_NAMES} more" if len(names) > LISTED_NAMES else ""
                n = self.times[reason]
                why = "as a placeholder" if reason == "placeholder" and n == 1 else REASON_TEXT[reason]
                out.append(f"dropped {n} {self.kind} name{'' if n == 1 else 's'} {why}: {shown}{more}")
        return out


# Used only when the model's query types are unusable after every attempt (the job message says so).
DEFAULT_QUERY_TYPES = [
    QueryType(name="information_seeking", definition="Asks for facts, explanations or background on a subject."),
    QueryType(name="help_seeking", definition="Asks for advice or support with a personal or practical situation."),
    QueryType(name="instructional", definition="Asks for step-by-step instructions to get something done."),
    QueryType(name="planning", definition="Asks for help organising a plan, schedule or strategy."),
    QueryType(name="error_detection", definition="Asks to find and fix what is wrong in something given."),
]


async def ask_query_types(phase: Phase, domain: str, examples: list[str]) -> list[QueryType]:
    """The set's query types; ``examples`` (seed rows) ground them in a dataset when there is one."""
    count = phase.spec.num_query_types
    note = " The input's examples show the kind of requests to cover." if examples else ""
    payload = {"count": count, "domain": domain, "examples": [e[:QUERY_TYPE_EXAMPLE_CHARS] for e in examples]}
    prompt = render("query_types", payload, count=count, domain=domain, note=note)
    dropped = Dropped("query type")
    for attempt in range(PARSE_ATTEMPTS):
        try:
            answer = await phase.asker.ask(
                "query_types",
                prompt,
                QUERY_TYPES_SCHEMA,
                QueryTypesAnswer,
                200 + TOKENS_PER_QUERY_TYPE * count,
                attempt,
            )
        except Unparseable:
            continue
        found: dict[str, QueryType] = {}
        for item in answer.query_types:
            reason = drop_reason(item.name, "query_type")
            if reason is not None:
                dropped.add(reason, item.name)
                continue
            name = skill_name(item.name)
            if name and name not in found and len(found) < count:
                definition = item.definition.strip() or f"A {name.replace('_', ' ')} request."
                examples_ = [e.strip() for e in item.examples if e.strip()][:5]
                found[name] = QueryType(name=name, definition=definition, examples=examples_)
        if found:
            for remark in dropped.notes():
                await phase.note(remark)
            if len(found) < count:
                await phase.note(f"{len(found)} of {count} query types")
            return list(found.values())
    why = "; ".join(dropped.notes()) or f"no parseable answer in {PARSE_ATTEMPTS} attempts"
    defaults = ", ".join(q.name for q in DEFAULT_QUERY_TYPES)
    await phase.note(
        f"the model gave no usable query types ({why}); the {len(DEFAULT_QUERY_TYPES)} default query types "
        f"were used instead of the {count} asked for: {defaults}"
    )
    return list(DEFAULT_QUERY_TYPES)


class Agnostic:
    def __init__(self, phase: Phase) -> None:
        assert isinstance(phase.spec, ExtractAgnosticSpec)
        self.phase, self.spec, self.store = phase, phase.spec, phase.store
        self.domain = self.spec.domain or DEFAULT_DOMAIN

    async def _step_done(self, field: str, value: object, ok: bool = True) -> None:
        if await self.store.agnostic_put(field, orjson.dumps(value)):
            await self.store.count("processed")
            if ok:
                await self.store.count("accepted")
            else:
                await self.store.count("rejected")
                await self.store.count("rejected:unparseable")

    async def topics(self) -> list[dict[str, str]]:
        raw = await self.store.agnostic_get("topics")
        if raw is not None:
            stored: list[dict[str, str]] = orjson.loads(raw)
            return stored
        await self.phase.say("asking for topics")
        want = self.spec.num_topics
        found: dict[str, str] = {}
        dropped = Dropped("topic")
        for attempt in range(PARSE_ATTEMPTS):
            missing = want - len(found)
            if missing <= 0:
                break
            note = f" Do not repeat these topics: {', '.join(found.values())}." if found else ""
            payload = {"count": missing, "domain": self.domain, "exclude": list(found.values())}
            prompt = render("topics", payload, count=missing, domain=self.domain, note=note)
            try:
                answer = await self.phase.asker.ask(
                    "topics", prompt, TOPICS_SCHEMA, TopicsAnswer, 100 + TOKENS_PER_NAME * missing, attempt
                )
            except Unparseable:
                continue
            for title in answer.topics:
                reason = drop_reason(title, "topic")
                if reason is not None:
                    dropped.add(reason, title)
                    continue
                name = skill_name(title)
                if name and name not in found and len(found) < want:
                    found[name] = title.strip()
        if not found:
            why = "; ".join(dropped.notes())
            raise ExtractFailed(f"the model gave no usable topics (asked for {want}){': ' + why if why else ''}")
        for remark in dropped.notes():
            await self.phase.note(remark)
        if len(found) < want:
            await self.phase.note(f"{len(found)} of {want} topics")
        topics = [{"name": n, "title": t} for n, t in found.items()]
        await self._step_done("topics", topics)
        return topics

    async def skills(self, topic: dict[str, str]) -> None:
        count = self.spec.skills_per_topic
        payload = {"topic": topic["title"], "count": count, "domain": self.domain}
        prompt = render("skills", payload, topic=topic["title"], count=count, domain=self.domain)
        for attempt in range(PARSE_ATTEMPTS):
            try:
                answer = await self.phase.asker.ask(
                    "skills",
                    prompt,
                    SKILLS_SCHEMA,
                    SkillsAnswer,
                    100 + TOKENS_PER_SKILL * count,
                    topic["name"],
                    attempt,
                )
            except Unparseable:
                continue
            found = [{"name": s.name, "description": s.description.strip()} for s in answer.skills[: 2 * count]]
            await self._step_done(f"skills:{topic['name']}", found)
            return
        await self._step_done(f"skills:{topic['name']}", [], ok=False)

    async def run(self) -> bool:
        topics = await self.topics()
        todo = [t for t in topics if await self.store.agnostic_get(f"skills:{t['name']}") is None]
        if todo:
            await self.phase.say(f"asking for skills of {len(todo)} topics")
        for start in range(0, len(todo), self.phase.parallel):
            window = todo[start : start + self.phase.parallel]

            async def give_up(topic: dict[str, str], _exc: LLMError) -> None:
                await self._step_done(f"skills:{topic['name']}", [], ok=False)

            await self.phase.run_calls(window, self.skills, give_up)
            if await self.phase.should_pause():
                return False
        if await self.store.agnostic_get("query_types") is None:
            await self.phase.say("asking for query types")
            found = await ask_query_types(self.phase, self.domain, [])
            await self._step_done("query_types", [q.model_dump() for q in found])
        return True

    async def _check_shortfall(self, usable: int, dropped: Dropped) -> None:
        """Fail a set far short of the request (unless allowed); otherwise note what came back, and why."""
        topics, per_topic = self.spec.num_topics, self.spec.skills_per_topic
        asked = topics * per_topic
        summary = (
            f"asked for {asked} skills over {topics} topics, got {usable} usable "
            f"(dropped: {dropped.count('placeholder')} placeholders, "
            f"{dropped.count('copied')} copied from the prompt's examples)"
        )
        reasons = dropped.notes()
        detail = "; ".join([summary, *reasons])
        if usable == 0:
            raise ExtractFailed(f"the model gave no usable skills: {detail}")
        if usable < MIN_SKILL_SHARE * asked and not self.spec.allow_shortfall:
            raise ExtractFailed(
                f"{detail}; nothing was saved: fewer than {MIN_SKILL_SHARE:.0%} of the skills asked for "
                "(set allow_shortfall to save such a set)"
            )
        for remark in [summary, *reasons]:  # what came back against what was asked, always
            await self.phase.note(remark)

    async def skill_set(self) -> SkillSetCreate:
        """Assemble the stored answers: topic names kept out, names deduplicated in topic order."""
        topics = await self.topics()
        topic_names = {t["name"] for t in topics}
        skills: dict[str, Skill] = {}
        dropped = Dropped("skill")
        for topic in topics:
            raw = await self.store.agnostic_get(f"skills:{topic['name']}")
            for item in orjson.loads(raw) if raw else []:
                reason = drop_reason(item["name"], "skill")
                if reason is not None:
                    dropped.add(reason, item["name"])
                    continue
                name = skill_name(item["name"])
                if name and name not in topic_names and name not in skills:
                    skills[name] = Skill(name=name, description=item["description"])
        await self._check_shortfall(len(skills), dropped)
        raw_types = await self.store.agnostic_get("query_types")
        query_types = [QueryType.model_validate(q) for q in orjson.loads(raw_types or b"[]")] or DEFAULT_QUERY_TYPES
        description = self.spec.description or (
            f"Model-only skill set for {self.domain}: {len(skills)} skills over {len(topics)} topics "
            f"({', '.join(t['title'] for t in topics[:8])}{', ...' if len(topics) > 8 else ''})."
        )
        return SkillSetCreate(
            name=self.spec.skill_set_name, description=description[:2000], skills=list(skills.values()),
            query_types=query_types,
        )  # fmt: skip
