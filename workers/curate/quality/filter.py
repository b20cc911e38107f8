"""The quality filter: runs the checks a job enabled and counts the outcomes.

``QualityFilter`` runs the enabled checks in order, collects every reason that applies (the first is the
primary one) and counts total / accepted / rejected per primary reason; the checks only say why.
"""

from collections import Counter

from schemas.curation import QualitySettings
from schemas.examples import GeneratedItem, QualityVerdict, Reason
from schemas.jobs import JobRecord
from workers.curate.quality.checks import (
    CutOffCheck,
    Embed,
    EmptyResponseCheck,
    ErrorCheck,
    GenericFillerCheck,
    IgnoresSkillsCheck,
    IncompleteCheck,
    JudgeCheck,
    LengthTracker,
    LowNoveltyCheck,
    NoSkillShownCheck,
    NotARequestCheck,
    OffTopicCheck,
    OneParagraphCheck,
    PlaceholderCheck,
    QualityCheck,
    RefusalCheck,
    RepetitionCheck,
    RestatesInstructionCheck,
    TooBriefCheck,
    TooShortCheck,
    VaguenessCheck,
)
from workers.curate.quality.text import _words


def quality_filter_for(record: JobRecord, embed: Embed | None = None) -> "QualityFilter":
    """The filter for one job: its quality settings and its skill set's descriptions (``no_skill_shown``)."""
    skill_set = record.skill_set
    descriptions = {s.name: s.description for s in skill_set.skills if s.description} if skill_set else {}
    return QualityFilter(record.spec.quality, descriptions, embed)


class QualityFilter:
    """Runs the checks a job enabled and counts outcomes (``stats``: total, accepted, per reason)."""

    def __init__(
        self,
        settings: QualitySettings,
        skill_descriptions: dict[str, str] | None = None,
        embed: Embed | None = None,
    ) -> None:
        self.settings = settings
        self.skill_descriptions = skill_descriptions or {}  # the job's skill set: name -> description
        self.embed = embed if settings.semantic_skills else None  # no_skill_shown's model, when installed
        self.lengths = LengthTracker()
        self.checks: list[QualityCheck] = [ErrorCheck(), CutOffCheck()]
        if settings.enabled:
            self.checks += [self._build(name) for name in settings.checks]
            if settings.judge is not None and "judge" not in settings.checks:
                self.checks.append(JudgeCheck())  # after the cheap checks unless placed in ``checks``
        self.stats: Counter[str] = Counter()

    def _build(self, name: str) -> QualityCheck:
        s = self.settings
        match name:
            case "empty_response":
                return EmptyResponseCheck()
            case "refusal":
                return RefusalCheck()
            case "placeholder":
                return PlaceholderCheck()
            case "incomplete":
                return IncompleteCheck()
            case "restates_instruction":
                return RestatesInstructionCheck(s.max_restate_similarity)
            case "low_novelty":
                return LowNoveltyCheck(s.min_novelty)
            case "repetitive":
                return RepetitionCheck()
            case "too_short":
                return TooShortCheck(s.min_response_words, s.min_instruction_words)
            case "generic_filler":
                return GenericFillerCheck()
            case "off_topic":
                return OffTopicCheck(s.min_topic_overlap, s.substantial_instruction_words, self.embed)
            case "vague":
                return VaguenessCheck(s.max_vagueness)
            case "one_paragraph":
                return OneParagraphCheck(
                    self.lengths, s.paragraph_max_words, s.substantial_instruction_words, s.brevity_min_items
                )
            case "too_brief":
                return TooBriefCheck(
                    self.lengths, s.brevity_ratio, s.brevity_min_items, s.substantial_instruction_words
                )
            case "ignores_skills":
                return IgnoresSkillsCheck()
            case "not_a_request":
                return NotARequestCheck()
            case "no_skill_shown":
                return NoSkillShownCheck(self.skill_descriptions, s.min_skill_similarity, self.embed)
            case "judge":
                return JudgeCheck()
        raise ValueError(f"unknown quality check {name!r}")

    def verdict(self, item: GeneratedItem) -> QualityVerdict:
        reasons: list[Reason] = []
        details: list[str] = []
        for check in self.checks:
            reason = check.check(item)
            if reason is None:
                continue
            if reason not in reasons:
                reasons.append(reason)
            details.append(check.explain(item))
            if check.terminal:
                break
        self.stats["total"] += 1
        if item.error is None and item.output.strip():
            self.lengths.add(len(_words(item.output)))  # judged against the earlier responses, then counted
        if reasons:
            self.stats[reasons[0].value] += 1
        else:
            self.stats["accepted"] += 1
        return QualityVerdict(accepted=not reasons, reasons=reasons, detail="; ".join(details))
