"""Automatic quality checks run on every generated item before it can be kept.

``text``: the normalised forms texts are compared in (shared with dedup); ``checks``: one small class per
rule, returning the ``Reason`` it rejects for; ``filter``: ``QualityFilter``, which runs the checks a job
enabled and counts the outcomes. The names below are the package's public surface.
"""

from workers.curate.quality.checks import (
    CutOffCheck,
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
from workers.curate.quality.filter import QualityFilter, quality_filter_for
from workers.curate.quality.text import content_words, normalise_text, words

__all__ = [
    "CutOffCheck",
    "EmptyResponseCheck",
    "ErrorCheck",
    "GenericFillerCheck",
    "IgnoresSkillsCheck",
    "IncompleteCheck",
    "JudgeCheck",
    "LengthTracker",
    "LowNoveltyCheck",
    "NoSkillShownCheck",
    "NotARequestCheck",
    "OffTopicCheck",
    "OneParagraphCheck",
    "PlaceholderCheck",
    "QualityCheck",
    "QualityFilter",
    "RefusalCheck",
    "RepetitionCheck",
    "RestatesInstructionCheck",
    "TooBriefCheck",
    "TooShortCheck",
    "VaguenessCheck",
    "content_words",
    "normalise_text",
    "quality_filter_for",
    "words",
]
