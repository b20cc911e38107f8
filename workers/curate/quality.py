"""Automatic quality checks run on every generated item before it can be kept.

Each check is a small class whose ``check(item)`` returns the ``Reason`` it rejects for, or None;
``QualityFilter`` runs the enabled checks in order, collects every reason that applies (the first is
the primary one) and counts the outcomes. The checks target the failure modes that hurt SFT most,
above all the "shirkers" of papers.md §A: lazy generic answers and the instruction re-asked.
"""

from __future__ import annotations

import re
import unicodedata
from abc import ABC, abstractmethod
from collections import Counter
from typing import ClassVar

from schemas.examples import GeneratedItem, QualityVerdict, Reason
from schemas.jobs import QualitySettings

# Sentence punctuation is dropped; operators and brackets stay so "x+1" and "x*1" remain different
# texts for the exact-duplicate hash (math and code instructions).
_KEEP_PUNCTUATION = frozenset("-*/%#&@\\_()[]{}")
_APOSTROPHES = str.maketrans({"'": None, "\u2019": None, "\u2018": None, "`": None})
_STRIP_TABLE: dict[int, str] = {}


def _strip_table(text: str) -> dict[int, str]:
    """Map every punctuation character seen so far to a space (built lazily, Unicode is large)."""
    for ch in set(text):
        code = ord(ch)
        if code not in _STRIP_TABLE and unicodedata.category(ch).startswith("P"):
            _STRIP_TABLE[code] = ch if ch in _KEEP_PUNCTUATION else " "
    return _STRIP_TABLE


def normalise_text(text: str) -> str:
    """The form texts are compared in: NFKC, lower-case, no apostrophes or sentence punctuation, single
    spaces."""
    text = unicodedata.normalize("NFKC", text).lower().translate(_APOSTROPHES)
    return " ".join(text.translate(_strip_table(text)).split())


def words(text: str) -> list[str]:
    return normalise_text(text).split()


def _prose(text: str) -> str:
    """Lower-case text with punctuation kept and apostrophes unified, for the phrase regexes."""
    text = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'").replace("\u2018", "'")
    return " ".join(text.split())


# About two hundred frequent function words: content words are what is left.
_STOPWORDS = frozenset(
    """
    a about above after again against all also am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had
    has have having he her here hers herself him himself his how i if in into is it its itself just
    me more most my myself no nor not now of off on once only or other our ours ourselves out over own
    same she should so some such than that the their theirs them themselves then there these they
    this those through to too under until up very was we were what when where which while who whom
    why will with would you your yours yourself yourselves im ive youre dont cant wont isnt arent
    doesnt didnt let lets may might must shall one ones get got make makes made many much well way
    ways thing things really like even still every per via etc use using used want need needs help
    """.split()
)


_SUFFIX_RE = re.compile(r"(?:ing|ed|es|s)$")


def content_words(text: str) -> set[str]:
    """Crudely stemmed non-stopwords ("bake", "baking" -> "bak"): enough to tell whether a response
    talks about the things the instruction mentions."""
    found = set()
    for word in normalise_text(text).replace("_", " ").split():
        if len(word) > 2 and word not in _STOPWORDS:
            found.add(_SUFFIX_RE.sub("", word)[:5].rstrip("e") or word)
    return found


class QualityCheck(ABC):
    """One rule. ``terminal`` checks stop the filter: nothing else is worth saying about that item."""

    name: ClassVar[str]
    reason: ClassVar[Reason]
    terminal: ClassVar[bool] = False

    @abstractmethod
    def check(self, item: GeneratedItem) -> Reason | None: ...

    def explain(self, item: GeneratedItem) -> str:
        """Short human text for the verdict; called only when ``check`` rejected."""
        return self.name.replace("_", " ")


class ErrorCheck(QualityCheck):
    """The recipe already failed the item (unparseable answer, LLM error): never keep it."""

    name = "error"
    reason = Reason.UNPARSEABLE
    terminal = True

    def check(self, item: GeneratedItem) -> Reason | None:
        return item.error

    def explain(self, item: GeneratedItem) -> str:
        return f"{item.error}: {item.error_detail}" if item.error_detail else str(item.error)


class CutOffCheck(QualityCheck):
    """A response that hit max_tokens ends mid-sentence; training on it teaches abrupt endings."""

    name = "cut_off"
    reason = Reason.CUT_OFF

    def check(self, item: GeneratedItem) -> Reason | None:
        return self.reason if item.finish_reason == "length" else None

    def explain(self, item: GeneratedItem) -> str:
        return "response cut off at max_tokens"


class EmptyResponseCheck(QualityCheck):
    name = "empty_response"
    reason = Reason.EMPTY_RESPONSE
    terminal = True

    def check(self, item: GeneratedItem) -> Reason | None:
        return None if words(item.output) else self.reason


class TooShortCheck(QualityCheck):
    """A terse response or a vague one-line instruction carries little to learn from."""

    name = "too_short"
    reason = Reason.TOO_SHORT

    def __init__(self, min_response_words: int, min_instruction_words: int) -> None:
        self.min_response_words = min_response_words
        self.min_instruction_words = min_instruction_words

    def check(self, item: GeneratedItem) -> Reason | None:
        short_response = len(words(item.output)) < self.min_response_words
        short_instruction = len(words(item.instruction)) < self.min_instruction_words
        return self.reason if short_response or short_instruction else None

    def explain(self, item: GeneratedItem) -> str:
        parts = []
        if (n := len(words(item.output))) < self.min_response_words:
            parts.append(f"response has {n} words (< {self.min_response_words})")
        if (n := len(words(item.instruction))) < self.min_instruction_words:
            parts.append(f"instruction has {n} words (< {self.min_instruction_words})")
        return ", ".join(parts)


_NEG = (
    r"(?:cannot|can ?not|can't|won't|will not|(?:am|'m) (?:unable|not able|not allowed|not permitted)"
    r" to|(?:do not|don't) feel comfortable)"
)
# "help" is excluded when idiomatic: "I can't help but smile", "I cannot help thinking".
_ACT = (
    r"(?:help(?! but\b| \w+ing\b)|assist|provide|comply|fulfil+|create|write|generate|produce|answer"
    r"|respond|engage|support|complete|do (?:that|this|so))"
)
_REFUSAL_PATTERNS = [
    rf"\bi {_NEG}(?: \w+){{0,2}}? {_ACT}\b",
    rf"\b(?:i'm|i am) (?:so |very |really |truly )?(?:sorry|afraid),? (?:but )?i {_NEG}"
    r"(?: \w+)?\s*(?:[.!]|$)",
    r"\bas an (?:ai|artificial intelligence)(?: (?:language )?model| assistant)?,? i\b",
    r"\bi (?:must|have to|will have to|need to) (?:respectfully |politely )?decline\b",
    r"\bi apologi[sz]e,? but\b",
    r"\b(?:against|violates?|goes against) (?:my|the|openai's) (?:\w+ )?"
    r"(?:guidelines|programming|policy|policies)\b",
    r"\bit(?: is|'s) not appropriate for me to\b",
    r"\bi (?:do not|don't) have (?:the ability|the capability|personal (?:opinions|experiences|feelings))\b",
]
_REFUSAL_RE = re.compile("|".join(f"(?:{p})" for p in _REFUSAL_PATTERNS))
_SENTENCE_END_RE = re.compile(r"(?<=[.!?])\s+")


class RefusalCheck(QualityCheck):
    """A refusal or AI disclaimer teaches the model to refuse.

    Only a refusal that opens the response, or makes up most of a short one, counts: a long answer may
    legitimately say "I cannot stress enough" or quote a refusal further down.
    """

    name = "refusal"
    reason = Reason.REFUSAL
    START_CHARS = 100
    SHORT_WORDS = 80
    SHARE = 0.5

    def check(self, item: GeneratedItem) -> Reason | None:
        text = _prose(item.output)
        first = _REFUSAL_RE.search(text)
        if first is None:
            return None
        if first.start() <= self.START_CHARS:
            return self.reason
        total = len(text.split())
        if total > self.SHORT_WORDS:
            return None
        refusing = sum(len(s.split()) for s in _SENTENCE_END_RE.split(text) if _REFUSAL_RE.search(s))
        return self.reason if refusing >= self.SHARE * total else None

    def explain(self, item: GeneratedItem) -> str:
        match = _REFUSAL_RE.search(_prose(item.output))
        return f"refusal: {match.group(0)!r}" if match else "refusal"


class RepetitionCheck(QualityCheck):
    """Degenerate looping ("The answer is: The answer is: ...") that small models fall into when sampling
    goes wrong: most word 3-grams of the response are repeats. Human prose repeats few 3-grams."""

    name = "repetitive"
    reason = Reason.REPETITIVE
    MIN_WORDS = 30
    MIN_DISTINCT_SHARE = 0.5

    def _distinct_share(self, item: GeneratedItem) -> float:
        tokens = words(item.output)
        grams = [tuple(tokens[i : i + 3]) for i in range(len(tokens) - 2)]
        return len(set(grams)) / len(grams) if grams else 1.0

    def check(self, item: GeneratedItem) -> Reason | None:
        if len(words(item.output)) < self.MIN_WORDS:
            return None
        return self.reason if self._distinct_share(item) < self.MIN_DISTINCT_SHARE else None

    def explain(self, item: GeneratedItem) -> str:
        return f"only {self._distinct_share(item):.0%} of the response's word 3-grams are distinct"


class RestatesInstructionCheck(QualityCheck):
    """The response is the instruction again (a shirker: re-asked, perhaps with "answer in one paragraph")."""

    name = "restates_instruction"
    reason = Reason.RESTATES_INSTRUCTION
    MIN_CONTAINED_WORDS = 8
    MIN_REASK_WORDS = 5  # "Hi" answered with "Hi there! How can I help?" is no re-ask
    MAX_REASK_EXTRA_WORDS = 15

    def __init__(self, max_similarity: float) -> None:
        self.max_similarity = max_similarity

    def check(self, item: GeneratedItem) -> Reason | None:
        instruction, response = normalise_text(item.instruction), normalise_text(item.output)
        if not instruction or not response:
            return None
        # The instruction verbatim plus a few words of its own ("... Answer in one paragraph.").
        n_asked = len(instruction.split())
        if (
            n_asked >= self.MIN_REASK_WORDS
            and f" {instruction} " in f" {response} "
            and len(response.split()) - n_asked <= self.MAX_REASK_EXTRA_WORDS
        ):
            return self.reason
        iw, rw = set(instruction.split()), set(response.split())
        shared = len(iw & rw)
        if shared / len(iw | rw) >= self.max_similarity:
            return self.reason
        # A response made of the instruction's words (a fragment of it, lightly shuffled).
        if len(rw) >= self.MIN_CONTAINED_WORDS and shared / len(rw) >= self.max_similarity:
            return self.reason
        return None

    def explain(self, item: GeneratedItem) -> str:
        return "response restates the instruction"


_FILLER_PATTERNS = [
    r"\b(?:that's|that is|what) a (?:great|good|excellent|interesting) question\b",
    r"\bthere are (?:many|several|a lot of|various|a number of) (?:different )?(?:factors|things|ways|"
    r"aspects|considerations|approaches|options)\b",
    r"\bit (?:really |all )?depends on\b",
    r"\bit is important to\b|\bit's important to\b",
    r"\b(?:consult|talk to|speak with|speak to|seek advice from) (?:with )?(?:an? |the )?"
    r"(?:relevant |qualified )?(?:experts?|professionals?|specialists?)\b",
    r"\bdo (?:your|some) (?:own )?research\b",
    r"\beveryone(?:'s situation)? is different\b|\bevery situation is (?:different|unique)\b",
    r"\bno one-size-fits-all\b|\bone size (?:does not|doesn't) fit all\b",
    r"\bat the end of the day\b",
    r"\bultimately,? (?:the best|it)\b",
    r"\bi hope (?:this|that) helps\b",
    r"\blet me know if you have any (?:other|more|further) questions\b",
    r"\bwhat works for (?:one|you|someone)\b",
    r"\bkeep (?:these|this|those) (?:tips|things|points) in mind\b",
    r"\bthere is no (?:single|simple|easy|right) answer\b",
    r"\bin general,\b|\bgenerally speaking\b",
    r"\bcarefully consider\b|\bthink carefully\b",
    r"\bstay positive\b|\bbe patient\b",
    r"\bmany (?:people|experts) (?:believe|say|find|agree)\b",
    r"\b(?:both )?an art and a science\b",
    r"\bis a (?:journey|process)\b|\benjoy the (?:process|journey)\b",
    r"\btakes? (?:time|practice) and (?:patience|practice|effort)\b",
    r"\bpractice and (?:persistence|patience)\b",
    r"\bdon't be afraid to\b|\bdo not be afraid to\b",
    r"\bexperiment with different\b|\btry (?:new|different) things\b",
    r"\bsmall (?:changes|adjustments|steps) can make a (?:big|huge) difference\b",
    r"\blearning (?:opportunity|experience)\b",
    r"\bstay (?:motivated|focused|consistent)\b",
    r"\bwhat works best for you\b|\bthe best (?:approach|option|choice) for you\b",
    r"\bthere are (?:many|so many) different\b",
    r"\bit's a good idea to\b|\bit is a good idea to\b",
    r"\bwith (?:time|practice) and (?:patience|persistence|dedication)\b|\bover time\b",
    r"\bkeep going\b|\bkeep (?:at it|trying)\b",
    r"\b(?:several|many|various) (?:key )?(?:factors|things) to (?:consider|keep in mind)\b",
]
_FILLER_RE = re.compile("|".join(f"(?:{p})" for p in _FILLER_PATTERNS))


class GenericFillerCheck(QualityCheck):
    """The lazy shirker: short, built from stock phrases, and barely touching the instruction's specifics.

    All conditions must hold, which keeps normal answers (long, or specific, or plainly worded) out of
    its way. It reports TOO_SHORT: the answer is short for what it was asked.
    """

    name = "generic_filler"
    reason = Reason.TOO_SHORT
    MAX_WORDS = 160
    MIN_FILLER_PHRASES = 3
    MIN_FILLER_PER_100_WORDS = 5.0
    MAX_OVERLAP = 0.25  # share of the instruction's content words the response uses

    def _measure(self, item: GeneratedItem) -> tuple[int, int, float]:
        asked = content_words(item.instruction)
        overlap = len(asked & content_words(item.output)) / len(asked) if asked else 0.0
        return len(words(item.output)), len(_FILLER_RE.findall(_prose(item.output))), overlap

    def check(self, item: GeneratedItem) -> Reason | None:
        n_words, fillers, overlap = self._measure(item)
        padded = fillers >= self.MIN_FILLER_PHRASES and 100 * fillers >= self.MIN_FILLER_PER_100_WORDS * n_words
        return self.reason if n_words <= self.MAX_WORDS and padded and overlap < self.MAX_OVERLAP else None

    def explain(self, item: GeneratedItem) -> str:
        _, fillers, overlap = self._measure(item)
        return f"generic filler ({fillers} stock phrases, {overlap:.0%} of the instruction's content words)"


class QualityFilter:
    """Runs the checks a job enabled and counts outcomes (``stats``: total, accepted, per reason)."""

    def __init__(self, settings: QualitySettings) -> None:
        self.settings = settings
        self.checks: list[QualityCheck] = [ErrorCheck(), CutOffCheck()]
        if settings.enabled:
            self.checks += [
                EmptyResponseCheck(),
                # the specific reasons first: a refusal or a re-asked instruction is also short
                RefusalCheck(),
                RestatesInstructionCheck(settings.max_restate_similarity),
                RepetitionCheck(),
                TooShortCheck(settings.min_response_words, settings.min_instruction_words),
                GenericFillerCheck(),
            ]
        self.stats: Counter[str] = Counter()

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
        if reasons:
            self.stats[reasons[0].value] += 1
        else:
            self.stats["accepted"] += 1
        return QualityVerdict(accepted=not reasons, reasons=reasons, detail="; ".join(details))
