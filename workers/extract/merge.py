"""Merge phase: fine labels into at most ``max_skills`` coarse skills, in rounds that each fit the context.

Round r reads its labels in name order in batches of ``merge_batch_size`` and asks for each batch to be
grouped into a quarter as many skills (or fewer when that already reaches the target); the group names
plus anything the answer left out become round r+1. Once every label fits one call, a final call makes the
coarse, mutually exclusive list. So 10,000+ distinct labels never need one call to see them all.
"""

import math

import orjson

from schemas.extract import PARSE_ATTEMPTS, ExtractDatasetSpec
from workers.extract.answers import MERGE_SCHEMA, MergeAnswer, skill_name
from workers.extract.ask import PROMPT_OVERHEAD_TOKENS, Unparseable, render
from workers.extract.label import domain_note
from workers.extract.phase import ExtractFailed, Phase
from workers.llm.errors import LLMError

LABEL_TOKENS = 14  # one label (<= 60 chars) with its JSON, in the prompt or in the answer
SHRINK = 4  # each non-final round asks for about a quarter as many groups as labels
MAX_ROUNDS = 12
ANSWER_BASE_TOKENS = 300


def merge_batch_size(spec: ExtractDatasetSpec) -> int:
    """Labels per merge call: the answer repeats each label once, and the prompt lists each once."""
    out_room = (spec.params.max_tokens - ANSWER_BASE_TOKENS) // LABEL_TOKENS
    in_room = (spec.context_tokens - PROMPT_OVERHEAD_TOKENS - spec.params.max_tokens) // LABEL_TOKENS
    return max(4, min(spec.merge_batch, out_room, in_room))


def groups_wanted(batch: int, level: int, max_skills: int) -> int:
    return max(1, min(batch - 1, max(math.ceil(batch / SHRINK), math.ceil(batch * max_skills / level))))


class Merger:
    def __init__(self, phase: Phase) -> None:
        self.phase, self.spec, self.store = phase, phase.dataset, phase.store
        self.size = merge_batch_size(self.spec)

    async def run(self) -> bool:
        state = await self.store.state()
        r = int(state.get("round", 0))
        while True:
            level = await self.store.level_size(r)
            if level == 0:
                raise ExtractFailed("no row got a usable label; see the unlabelled rows for why")
            if level <= self.size:
                await self.phase.say(f"merging {level} labels into at most {self.spec.max_skills} skills")
                await self.final(r, level)
                return True
            await self.phase.say(f"merging labels: round {r + 1}, {level} labels")
            if not await self.round(r, level):
                return False
            after = await self.store.level_size(r + 1)
            if after >= level:
                raise ExtractFailed(
                    f"merging stalled at {level} labels in round {r + 1}; raise merge_batch or context_tokens"
                )
            r += 1
            if r >= MAX_ROUNDS:
                raise ExtractFailed(f"still {after} labels after {MAX_ROUNDS} merge rounds")
            await self.store.set_state(round=r)

    async def round(self, r: int, level: int) -> bool:
        """One round, in windows of parallel calls; False if the step must hand over mid-round."""
        done = await self.store.batches_done(r)
        todo = [b for b in range(math.ceil(level / self.size)) if b not in done]
        for start in range(0, len(todo), self.phase.parallel):
            window = todo[start : start + self.phase.parallel]

            async def carry(batch: int, _exc: LLMError, r: int = r) -> None:
                await self.apply(r, batch, None)

            await self.phase.run_calls(window, lambda b: self.batch(r, b, level), carry)
            if start + self.phase.parallel < len(todo) and await self.phase.should_pause():
                return False
        return True

    async def ask(self, labels: list[tuple[str, int]], groups: int, key: object) -> MergeAnswer | None:
        prompt = render(
            "merge",
            {"max_skills": groups, "labels": [{"label": n, "rows": w} for n, w in labels]},
            n=len(labels),
            max_groups=groups,
            domain_note=domain_note(self.spec),
        )
        for attempt in range(PARSE_ATTEMPTS):
            try:
                return await self.phase.asker.ask(
                    "merge", prompt, MERGE_SCHEMA, MergeAnswer, self.spec.params.max_tokens, key, attempt
                )
            except Unparseable:
                continue
        return None

    async def batch(self, r: int, batch: int, level: int) -> None:
        labels = await self.store.level_batch(r, batch * self.size, (batch + 1) * self.size)
        answer = await self.ask(labels, groups_wanted(len(labels), level, self.spec.max_skills), (r, batch))
        await self.apply(r, batch, answer, labels)

    async def apply(
        self, r: int, batch: int, answer: MergeAnswer | None, labels: list[tuple[str, int]] | None = None
    ) -> None:
        """Group names carry their members' rows into the next round; left-out labels carry themselves."""
        if labels is None:
            labels = await self.store.level_batch(r, batch * self.size, (batch + 1) * self.size)
        weights = dict(labels)
        nxt: dict[str, int] = {}
        for group, members in _groups(answer, weights):
            nxt[group] = nxt.get(group, 0) + sum(weights[m] for m in members)
            for m in members:
                del weights[m]
        for label, weight in weights.items():
            nxt[label] = nxt.get(label, 0) + weight
        await self.store.apply_merge(r, batch, nxt)

    async def final(self, r: int, level: int) -> None:
        labels = await self.store.level_batch(r, 0, level)
        answer = await self.ask(labels, self.spec.max_skills, (r, "final"))
        weights = dict(labels)
        coarse: dict[str, str] = {}
        for group, _members in _groups(answer, weights):
            coarse.setdefault(group, "")
        for g in answer.skills if answer else []:
            name = skill_name(g.name)
            if name in coarse and not coarse[name]:
                coarse[name] = g.description.strip()[:300]
        if not coarse:
            if level > self.spec.max_skills:
                raise ExtractFailed(f"the final merge of {level} labels gave no usable answer")
            coarse = dict.fromkeys(weights, "")  # already few enough: keep the labels as they are
            await self.phase.note("final merge answer unusable; kept the labels as skills")
        body = [{"name": n, "description": d} for n, d in list(coarse.items())[: self.spec.max_skills]]
        await self.store.set_coarse(orjson.dumps(body))


def _groups(answer: MergeAnswer | None, weights: dict[str, int]) -> list[tuple[str, list[str]]]:
    """(group name, members) for groups with at least one real, not yet claimed member."""
    claimed: set[str] = set()
    out: list[tuple[str, list[str]]] = []
    for g in answer.skills if answer else []:
        name = skill_name(g.name)
        members = []
        for raw in g.members:
            m = skill_name(raw)
            if m is not None and m in weights and m not in claimed:
                members.append(m)
                claimed.add(m)
        if name and members:
            out.append((name, members))
    return out
