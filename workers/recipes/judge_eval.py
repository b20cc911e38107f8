"""Calibrate a judge (``skillmix judge-eval``): item i is labelled example i of the job spec.

Each item runs the default heuristic checks (``QualitySettings()`` through the ``QualityFilter`` every job
uses) and then the judge (``workers.curate.judge.Judge``, the one ``quality.judge`` runs) on the job's metered
client: its calls count, are limited and stop at a cancel like every job call. The record keeps the label, the
checks' reasons (``judge_eval``) and the judge's verdict (``judge``: scores per criterion, its own pass/fail,
reason; no scores when its answer could not be read after the judge's one retry). The report
(``GET /v1/judge-evals/{id}/report``) is computed from the records by the API.

The length checks (``too_brief``, ``one_paragraph``) compare a response with the job's running median: here
that median is the labelled set's, taken once, so every example is judged against the same one whatever the
order chunks run in.
"""

from typing import ClassVar

from schemas.curation import JudgeSettings, QualitySettings
from schemas.examples import GeneratedItem, WorkItem
from schemas.jobs import JobRecord, JudgeEvalJobSpec
from schemas.judge_eval import JudgeEvalRow
from schemas.settings import EndpointSettings
from workers.curate import judge as judge_module
from workers.curate.quality import LengthTracker, QualityFilter
from workers.curate.quality.text import _words
from workers.llm.client import ChatClient
from workers.recipes.base import Recipe


class JudgeEvalRecipe(Recipe):
    name: ClassVar[str] = "judge-eval"
    template_version: ClassVar[str] = judge_module.TEMPLATE_VERSION

    def __init__(self, record: JobRecord, endpoint_name: str, endpoint: EndpointSettings) -> None:
        super().__init__(record, endpoint_name, endpoint)
        assert isinstance(record.spec, JudgeEvalJobSpec)
        self.spec = record.spec
        settings = JudgeSettings(endpoint=self.spec.judge, min_score=1, max_tokens=self.spec.judge_max_tokens)
        # min_score 1: the verdict and scores come back as the judge gave them; the report applies every threshold
        self.judge = judge_module.Judge(record, settings, endpoint_name, endpoint.model, endpoint.json_schema)
        self._lengths: LengthTracker | None = None

    def item(self, index: int, attempt: int = 0) -> WorkItem:
        return WorkItem(index=index, attempt=attempt, skills=list(self.spec.examples[index].skills))

    def _median_tracker(self) -> LengthTracker:
        if self._lengths is None:
            tracker = LengthTracker(size=max(1, len(self.spec.examples)))
            for example in self.spec.examples:
                tracker.add(len(_words(example.output)))
            self._lengths = tracker
        return self._lengths

    def heuristics(self, index: int) -> list[str]:
        """The default checks' reasons for example ``index`` (empty: they keep it)."""
        example = self.spec.examples[index]
        checks = QualityFilter(QualitySettings())
        base = self._median_tracker()
        checks.lengths.size, checks.lengths.seen = base.size, base.seen  # the set's median, not an empty history
        checks.lengths._window.extend(base._window)
        checks.lengths._sorted.extend(base._sorted)
        item = GeneratedItem(
            job_id=self.record.id,
            index=index,
            skills=list(example.skills),
            instruction=example.instruction,
            input=example.input,
            output=example.output,
        )
        return [str(reason) for reason in checks.verdict(item).reasons]

    def record_for(self, item: WorkItem, **fields: object) -> GeneratedItem:
        """Every record carries its label and the checks' reasons, even one whose judge call failed."""
        if "judge_eval" not in fields:
            example = self.spec.examples[item.index]
            fields["judge_eval"] = JudgeEvalRow(
                label=example.label,
                kind=example.kind,
                heuristics=self.heuristics(item.index),
                criteria=list(judge_module.CRITERIA),
                words=len(_words(example.output)),
            )
        return super().record_for(item, **fields)

    async def generate(self, item: WorkItem, llm: ChatClient) -> GeneratedItem:
        example = self.spec.examples[item.index]
        request = example.instruction + (f"\n\n{example.input}" if example.input.strip() else "")
        graded = GeneratedItem(
            job_id=self.record.id,
            index=item.index,
            attempts=item.attempt + 1,
            skills=list(example.skills),
            instruction=request,
            output=example.output,
        )
        verdict = await self.judge.judge(graded, llm)
        return self.record_for(
            item,
            instruction=example.instruction,
            input=example.input,
            output=example.output,
            usage=verdict.usage,
            model=verdict.model or self.endpoint.model,
            judge=verdict,
        )
