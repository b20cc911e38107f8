"""Label phase (papers.md §A SDD, §B): one fine-grained snake_case skill per row, many rows per call.

Rows are packed into a call up to ``rows_per_call`` and what fits the context. Rows the answer leaves out
or names unusably are asked again (up to ``PARSE_ATTEMPTS`` calls), then reported unlabelled.
"""

from schemas.extract import PARSE_ATTEMPTS, ExtractDatasetSpec
from workers.extract.answers import RowSkillsAnswer, row_skills_schema, skill_name
from workers.extract.ask import PROMPT_OVERHEAD_TOKENS, Unparseable, render, tokens
from workers.extract.phase import Phase, unlabelled
from workers.extract.reader import SeedRow
from workers.llm.errors import LLMError
from workers.llm.limits import CHARS_PER_TOKEN

ANSWER_TOKENS_PER_ROW = 32  # {"id": 12345, "skill": "a_descriptive_name"} with margin
ANSWER_BASE_TOKENS = 64
ROW_FRAME_TOKENS = 12  # the JSON around one row's text


def row_chars(spec: ExtractDatasetSpec, reserved_tokens: int = 0) -> int:
    """Characters of a row's text put in a prompt: ``max_row_chars``, or less if one row must still fit."""
    room = spec.context_tokens - PROMPT_OVERHEAD_TOKENS - spec.params.max_tokens - reserved_tokens
    return max(100, min(spec.max_row_chars, room * CHARS_PER_TOKEN))


def plan_calls(rows: list[SeedRow], spec: ExtractDatasetSpec, reserved_tokens: int = 0) -> list[list[SeedRow]]:
    """Consecutive rows per call: at most ``rows_per_call``, prompt and answer within the context."""
    per_call = min(spec.rows_per_call, (spec.params.max_tokens - ANSWER_BASE_TOKENS) // ANSWER_TOKENS_PER_ROW)
    budget = spec.context_tokens - PROMPT_OVERHEAD_TOKENS - reserved_tokens - ANSWER_BASE_TOKENS
    chars = row_chars(spec, reserved_tokens)
    calls: list[list[SeedRow]] = []
    current: list[SeedRow] = []
    used = 0
    for row in rows:
        cost = tokens(row.text[:chars]) + ROW_FRAME_TOKENS + ANSWER_TOKENS_PER_ROW
        if current and (len(current) >= max(1, per_call) or used + cost > budget):
            calls.append(current)
            current, used = [], 0
        current.append(row)
        used += cost
    if current:
        calls.append(current)
    return calls


def answer_tokens(n_rows: int) -> int:
    return ANSWER_BASE_TOKENS + ANSWER_TOKENS_PER_ROW * n_rows


def domain_note(spec: ExtractDatasetSpec) -> str:
    return f" ({spec.description})" if spec.description else ""


class Labeller:
    def __init__(self, phase: Phase) -> None:
        self.phase, self.spec = phase, phase.dataset
        self.chars = row_chars(self.spec)

    async def run(self) -> bool:
        await self.phase.say("labelling rows")
        return await self.phase.stream_rows("label", self.window)

    async def window(self, rows: list[SeedRow]) -> None:
        store = self.phase.store
        done = await store.row_values("fine", [r.index for r in rows])
        todo = [r for r, d in zip(rows, done, strict=True) if d is None]
        empty = [r for r in todo if not r.text.strip()]
        if empty:
            await store.report("fine", [unlabelled(r, "label", "empty_row", "the row has no text") for r in empty])
        calls = plan_calls([r for r in todo if r.text.strip()], self.spec)
        await self.phase.run_calls(calls, self.label, self.give_up)

    async def give_up(self, rows: list[SeedRow], exc: LLMError) -> None:
        await self.phase.store.report("fine", [unlabelled(r, "label", "llm_error", str(exc)) for r in rows])

    async def label(self, rows: list[SeedRow]) -> None:
        pending = {r.index: r for r in rows}
        detail = ""
        for attempt in range(PARSE_ATTEMPTS):
            batch = list(pending.values())
            prompt = render(
                "label",
                {"rows": [{"id": r.index, "text": r.text[: self.chars]} for r in batch]},
                n=len(batch),
                domain_note=domain_note(self.spec),
            )
            try:
                answer = await self.phase.asker.ask(
                    "label",
                    prompt,
                    row_skills_schema(),
                    RowSkillsAnswer,
                    answer_tokens(len(batch)),
                    batch[0].index,
                    attempt,
                )
            except Unparseable as exc:
                detail = str(exc)
                continue
            labels: list[tuple[int, str]] = []
            for item in answer.labels:
                name = skill_name(item.skill)
                if name and item.id in pending:
                    labels.append((item.id, name))
                    del pending[item.id]
            await self.phase.store.record_labels(labels)
            if not pending:
                return
            detail = f"the answer gave no usable label for the row (attempt {attempt + 1})"
        await self.phase.store.report("fine", [unlabelled(r, "label", "unparseable", detail) for r in pending.values()])
