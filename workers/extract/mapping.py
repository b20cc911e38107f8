"""Map phase: every labelled row back to one coarse skill, re-asking up to 3 times when the answer is off
the list (papers.md §A SDD); frequencies and the first ``MAX_EXEMPLARS`` rows per skill are kept.
"""

import orjson

from schemas.extract import MAP_ATTEMPTS
from workers.extract.answers import RowSkillsAnswer, row_skills_schema, skill_name
from workers.extract.ask import Unparseable, render, tokens
from workers.extract.label import answer_tokens, plan_calls, row_chars
from workers.extract.phase import ExtractFailed, Phase, exemplar, unlabelled
from workers.extract.reader import SeedRow
from workers.llm.errors import LLMError

MAX_ENUM = 500  # providers cap enum sizes; past this the list is given in the prompt only
DESCRIPTION_CHARS = 150
MIN_ROW_ROOM_TOKENS = 400


def row_exemplar(row: SeedRow) -> str:
    """What a skill keeps of a row: its text, or for a MATH row its fields as JSON (problem and solution each
    cut like any exemplar), which ``exemplar_fields`` reads back."""
    if not row.fields:
        return exemplar(row.text)
    cut = {k: exemplar(v) if k in ("problem", "solution") else v for k, v in row.fields.items()}
    return orjson.dumps(cut).decode()


def exemplar_fields(stored: str) -> dict[str, str] | None:
    """A MATH row's exemplar fields, or None for a plain text exemplar."""
    if not stored.startswith("{"):
        return None
    try:
        found = orjson.loads(stored)
    except orjson.JSONDecodeError:
        return None
    return found if isinstance(found, dict) and isinstance(found.get("problem"), str) else None


class Mapper:
    def __init__(self, phase: Phase, coarse: list[dict[str, str]]) -> None:
        self.phase, self.spec = phase, phase.dataset
        self.names = [c["name"] for c in coarse]
        self.allowed = set(self.names)
        self.skills: list[dict[str, str]] = [
            {"name": c["name"], "description": c.get("description", "")[:DESCRIPTION_CHARS]} for c in coarse
        ]
        room = self.spec.context_tokens - self.spec.params.max_tokens - self._list_tokens()
        if room < MIN_ROW_ROOM_TOKENS:
            self.skills = [{"name": n, "description": ""} for n in self.names]
            room = self.spec.context_tokens - self.spec.params.max_tokens - self._list_tokens()
        if room < MIN_ROW_ROOM_TOKENS:
            raise ExtractFailed(f"{len(self.names)} coarse skills do not fit context_tokens; lower max_skills")
        self.reserved = self._list_tokens()
        self.chars = row_chars(self.spec, self.reserved)
        self.schema = row_skills_schema(self.names if len(self.names) <= MAX_ENUM else None)

    def _list_tokens(self) -> int:
        return tokens(orjson.dumps(self.skills).decode())

    async def run(self) -> bool:
        await self.phase.say(f"mapping rows to {len(self.names)} skills")
        return await self.phase.stream_rows("map", self.window)

    async def window(self, rows: list[SeedRow]) -> None:
        store = self.phase.store
        indexes = [r.index for r in rows]
        fine = await store.row_values("fine", indexes)
        mapped = await store.row_values("map", indexes)
        todo: list[tuple[SeedRow, str]] = []
        missing = []
        for row, label, done in zip(rows, fine, mapped, strict=True):
            if done is not None or label == "":  # mapped already, or reported in the label phase
                continue
            if label is None:
                missing.append(unlabelled(row, "map", "unparseable", "the row has no label from the label phase"))
            else:
                todo.append((row, label))
        if missing:
            await store.report("map", missing)
        labels = dict((r.index, label) for r, label in todo)
        calls = plan_calls([r for r, _ in todo], self.spec, self.reserved)
        await self.phase.run_calls(calls, lambda rows: self.map(rows, labels), self.give_up)

    async def give_up(self, rows: list[SeedRow], exc: LLMError) -> None:
        await self.phase.store.report("map", [unlabelled(r, "map", "llm_error", str(exc)) for r in rows])

    async def map(self, rows: list[SeedRow], labels: dict[int, str]) -> None:
        pending = {r.index: r for r in rows}
        why: dict[int, tuple[str, str]] = {}  # row -> (reason, detail) of its last failed attempt
        off_list: list[str] = []
        for attempt in range(MAP_ATTEMPTS):
            batch = list(pending.values())
            note = ""
            if off_list:
                note = (
                    f" Earlier answers used names that are not on the list ({', '.join(sorted(set(off_list))[:10])});"
                    " every answer must be one of the listed names."
                )
            payload = {
                "skills": self.skills,
                "rows": [{"id": r.index, "label": labels[r.index], "text": r.text[: self.chars]} for r in batch],
            }
            try:
                answer = await self.phase.asker.ask(
                    "map",
                    render("map", payload, note=note),
                    self.schema,
                    RowSkillsAnswer,
                    answer_tokens(len(batch)),
                    batch[0].index,
                    attempt,
                )
            except Unparseable as exc:
                why.update(dict.fromkeys(pending, ("unparseable", str(exc))))
                continue
            done: list[tuple[int, str, str]] = []
            off_list = []
            for item in answer.labels:
                if item.id not in pending:
                    continue
                name = skill_name(item.skill)
                if name in self.allowed:
                    done.append((item.id, name, row_exemplar(pending.pop(item.id))))
                else:
                    off_list.append(item.skill[:60])
                    why[item.id] = ("off_list", f"answered {item.skill[:60]!r}, which is not on the list")
            await self.phase.store.record_mapped(done)
            if off_list:
                await self.phase.store.count("parse_failures", len(off_list))
            answered = {item.id for item in answer.labels}
            why.update({i: ("unparseable", "the answer left the row out") for i in pending if i not in answered})
            if not pending:
                return
        await self.phase.store.report(
            "map", [unlabelled(r, "map", *why.get(r.index, ("unparseable", ""))) for r in pending.values()]
        )
