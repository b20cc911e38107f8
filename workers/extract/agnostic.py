"""Model-only extraction (papers.md §A "-D"): topics, then skills per topic, then query types.

Each finished step's answer is stored before it is counted, so a redone step skips what is done. Names are
normalised (lower snake_case, deduplicated) and topic names are kept out of the skill list.
"""

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
from workers.extract.ask import Unparseable, render
from workers.extract.phase import ExtractFailed, Phase
from workers.llm.errors import LLMError

DEFAULT_DOMAIN = "instruction following (the requests people send to a general-purpose AI assistant)"
TOKENS_PER_NAME = 24
TOKENS_PER_SKILL = 80  # name plus a one-sentence description
TOKENS_PER_QUERY_TYPE = 160
QUERY_TYPE_EXAMPLES = 24  # dataset rows shown when asking a seeded set's query types
QUERY_TYPE_EXAMPLE_CHARS = 300

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
            name = skill_name(item.name)
            if name and name not in found and len(found) < count:
                definition = item.definition.strip() or f"A {name.replace('_', ' ')} request."
                examples_ = [e.strip() for e in item.examples if e.strip()][:5]
                found[name] = QueryType(name=name, definition=definition, examples=examples_)
        if found:
            return list(found.values())
    await phase.note("the model's query types were unusable; the default list was used")
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
                name = skill_name(title)
                if name and name not in found and len(found) < want:
                    found[name] = title.strip()
        if not found:
            raise ExtractFailed("the model gave no usable topics")
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

    async def skill_set(self) -> SkillSetCreate:
        """Assemble the stored answers: topic names kept out, names deduplicated in topic order."""
        topics = await self.topics()
        topic_names = {t["name"] for t in topics}
        skills: dict[str, Skill] = {}
        for topic in topics:
            raw = await self.store.agnostic_get(f"skills:{topic['name']}")
            for item in orjson.loads(raw) if raw else []:
                name = skill_name(item["name"])
                if name and name not in topic_names and name not in skills:
                    skills[name] = Skill(name=name, description=item["description"])
        if not skills:
            raise ExtractFailed("the model gave no usable skills")
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
