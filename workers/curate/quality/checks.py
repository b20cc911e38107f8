"""The quality checks: each a small class whose ``check(item)`` returns the ``Reason`` it rejects for, or None.

The checks target the failure modes that hurt SFT most, above all the "shirkers" of papers.md §A: lazy
generic answers and the instruction re-asked. ``QualityFilter`` (``filter.py``) runs and counts them.
"""

from __future__ import annotations

import bisect
import logging
import re
import unicodedata
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, ClassVar

from schemas.examples import GeneratedItem, Reason
from workers.curate.quality.text import _STOPWORDS, _prose, _stem, _word_set, _words, content_words, normalise_text


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
        return None if _words(item.output) else self.reason


class TooShortCheck(QualityCheck):
    """A terse response or a vague one-line instruction carries little to learn from."""

    name = "too_short"
    reason = Reason.TOO_SHORT

    def __init__(self, min_response_words: int, min_instruction_words: int) -> None:
        self.min_response_words = min_response_words
        self.min_instruction_words = min_instruction_words

    def check(self, item: GeneratedItem) -> Reason | None:
        short_response = len(_words(item.output)) < self.min_response_words
        short_instruction = len(_words(item.instruction)) < self.min_instruction_words
        return self.reason if short_response or short_instruction else None

    def explain(self, item: GeneratedItem) -> str:
        parts = []
        if (n := len(_words(item.output))) < self.min_response_words:
            parts.append(f"response has {n} words (< {self.min_response_words})")
        if (n := len(_words(item.instruction))) < self.min_instruction_words:
            parts.append(f"instruction has {n} words (< {self.min_instruction_words})")
        return ", ".join(parts)


# Refusal patterns are written against ``_expanded`` text: contractions spelt out ("I'm" -> "i am",
# "can't" -> "cannot", "isn't" -> "is not"), so one pattern covers every apostrophe and contraction.
_NEG = (
    r"(?:cannot|can not|will not|would not|(?:will|would) not be able to|am (?:unable|not able|not allowed"
    r"|not permitted|not in a position|not going) to|do not feel comfortable|am not comfortable)"
)
# "help" is excluded when idiomatic: "I can't help but smile", "I cannot help thinking".
_ACT = (
    r"(?:help(?! but\b| \w+ing\b)|assist|provide|comply|fulfil+|create|write|generate|produce|answer"
    r"|respond|engage|support|complete|offer|give|share|discuss|do (?:that|this|so|it))"
)
_REFUSAL_PATTERNS = [
    rf"\bi {_NEG}(?: \w+){{0,2}}? {_ACT}\b",
    rf"\b(?:(?:i am )?(?:so |very |really |truly )?(?:sorry|afraid)|unfortunately),? (?:but )?i {_NEG}"
    r"(?: \w+)?\s*(?:[.!,]|$)",
    r"\b(?:this|that|it|which|your request|the request|this request) (?:is|would be) not "
    r"(?:something|a (?:request|task|topic|question)|anything) (?:that )?i (?:can|could|am able to|will|should)\b",
    r"\b(?:this|that|it|the request|this request) (?:is|falls|would be) (?:outside|beyond) (?:of )?"
    r"(?:what i (?:can|am able)|my (?:ability|abilities|capabilities|scope|remit|expertise|role))",
    r"\bas an (?:ai|artificial intelligence)(?: (?:language )?model| assistant)?,? i\b",
    r"\bi (?:must|have to|will have to|need to|am going to have to|would have to) (?:respectfully |politely )?"
    r"(?:decline|refrain|pass on)\b",
    r"\bi (?:respectfully |politely )?decline to\b",
    r"\bi apologi[sz]e,? but\b",
    r"\bi would (?:rather|prefer) not\b",
    r"\b(?:against|violates?|goes against) (?:my|the|openai's) (?:\w+ )?"
    r"(?:guidelines|programming|policy|policies)\b",
    r"\bit (?:is|would be) (?:not appropriate|inappropriate) for me to\b",
    r"\bi (?:do not|cannot) have (?:the ability|the capability|access|personal (?:opinions|experiences|feelings))\b",
    r"\bnot (?:able|in a position|permitted|allowed) to (?:help|assist|provide|comply|answer|fulfil+) "
    r"(?:with )?(?:this|that|your|such)\b",
]
_REFUSAL_RE = re.compile("|".join(f"(?:{p})" for p in _REFUSAL_PATTERNS))
# Every refusal pattern contains one of these literals ("cannot" contains "not"; ``_NEG`` always has "not" or
# "unable"): a text with none of them cannot match, and most answers are ruled out by a few fast ``in`` tests
# instead of the regex scan. Keep in step with ``_REFUSAL_PATTERNS`` (tests/workers/test_quality.py checks it).
_REFUSAL_LITERALS = (
    "not",
    "unable",
    "outside",
    "beyond",
    "as an a",
    "decline",
    "refrain",
    "pass on",
    "apologi",
    "guidelines",
    "programming",
    "polic",
    "appropriate",
)


def _may_refuse(text: str) -> bool:
    for literal in _REFUSAL_LITERALS:
        if literal in text:
            return True
    return False


def _refusal(text: str) -> re.Match[str] | None:
    return _REFUSAL_RE.search(text) if _may_refuse(text) else None


_SENTENCE_END_RE = re.compile(r"(?<=[.!?])\s+")
_CONTRACTION_RE = re.compile(
    r"\b(?:(can)'t|(won)'t|(shan)'t|(\w+)n't|(i)'m|(\w+)'re|(i|you|we|they|he|she|it|that|there)'d"
    r"|(i|you|we|they)'ll|(i|you|we|they)'ve|(it|that|this|there|what|here)'s)\b"
)
_EXPANSIONS = ["cannot", "will not", "shall not", " not", " am", " are", " would", " will", " have", " is"]


def _expand_contraction(match: re.Match[str]) -> str:
    for group, expansion in enumerate(_EXPANSIONS, start=1):
        if (stem := match.group(group)) is not None:
            return expansion if group <= 3 else stem + expansion
    return match.group(0)


@lru_cache(maxsize=256)
def _expanded(text: str, limit: int | None = None) -> str:
    """``_prose`` (its first ``limit`` characters) with contractions spelt out: "I'm" -> "i am",
    "can't" -> "cannot", "isn't" -> "is not"."""
    text = _prose(text if limit is None else text[: limit + 40])[:limit]
    return _CONTRACTION_RE.sub(_expand_contraction, text) if "'" in text else text


class RefusalCheck(QualityCheck):
    """A refusal or AI disclaimer teaches the model to refuse.

    Only a refusal that opens the response, or makes up most of a short one, counts: a long answer may
    legitimately say "I cannot stress enough" or quote a refusal further down.
    """

    name = "refusal"
    reason = Reason.REFUSAL
    START_CHARS = 160
    SHORT_WORDS = 120
    SHARE = 0.5

    def check(self, item: GeneratedItem) -> Reason | None:
        total = len(_words(item.output))
        # In a long answer only the opening matters: expand and search just that.
        text = _expanded(item.output, None if total <= self.SHORT_WORDS else self.START_CHARS + 120)
        first = _refusal(text)
        if first is None:
            return None
        if first.start() <= self.START_CHARS:
            return self.reason
        if total > self.SHORT_WORDS:
            return None
        refusing = sum(len(s.split()) for s in _SENTENCE_END_RE.split(text) if _refusal(s))
        return self.reason if refusing >= self.SHARE * total else None

    def explain(self, item: GeneratedItem) -> str:
        match = _REFUSAL_RE.search(_expanded(item.output))
        return f"refusal: {match.group(0)!r}" if match else "refusal"


class RepetitionCheck(QualityCheck):
    """Degenerate looping ("The answer is: The answer is: ...") that small models fall into when sampling
    goes wrong: most word 3-grams of the response are repeats. Human prose repeats few 3-grams."""

    name = "repetitive"
    reason = Reason.REPETITIVE
    MIN_WORDS = 30
    MIN_DISTINCT_SHARE = 0.5

    def _distinct_share(self, item: GeneratedItem) -> float:
        tokens = _words(item.output)
        n_grams = len(tokens) - 2
        return len(set(zip(tokens, tokens[1:], tokens[2:], strict=False))) / n_grams if n_grams > 0 else 1.0

    def check(self, item: GeneratedItem) -> Reason | None:
        n_words = len(_words(item.output))
        if n_words < self.MIN_WORDS:
            return None
        # Each distinct word but the last two starts a distinct 3-gram: enough distinct words settle it without
        # building the 3-grams.
        if len(_word_set(item.output)) - 2 >= self.MIN_DISTINCT_SHARE * (n_words - 2):
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
        asked, said = _words(item.instruction), _words(item.output)
        n_asked = len(asked)
        if (
            n_asked >= self.MIN_REASK_WORDS
            and len(said) - n_asked <= self.MAX_REASK_EXTRA_WORDS
            and f" {instruction} " in f" {response} "
        ):
            return self.reason
        iw, rw = _word_set(item.instruction), _word_set(item.output)
        shared = len(iw & rw)
        if shared / (len(iw) + len(rw) - shared) >= self.max_similarity:
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


@lru_cache(maxsize=256)
def _stock_phrases(text: str) -> int:
    return len(_FILLER_RE.findall(_prose(text)))


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

    def _overlap(self, item: GeneratedItem) -> float:
        asked = content_words(item.instruction)
        return len(asked & content_words(item.output)) / len(asked) if asked else 0.0

    def _measure(self, item: GeneratedItem) -> tuple[int, int, float]:
        return len(_words(item.output)), _stock_phrases(item.output), self._overlap(item)

    def check(self, item: GeneratedItem) -> Reason | None:
        if len(_words(item.output)) > self.MAX_WORDS:
            return None
        if self._overlap(item) >= self.MAX_OVERLAP:  # on topic: no need to count the stock phrases
            return None
        n_words, fillers, overlap = self._measure(item)
        padded = fillers >= self.MIN_FILLER_PHRASES and 100 * fillers >= self.MIN_FILLER_PER_100_WORDS * n_words
        return self.reason if n_words <= self.MAX_WORDS and padded and overlap < self.MAX_OVERLAP else None

    def explain(self, item: GeneratedItem) -> str:
        _, fillers, overlap = self._measure(item)
        return f"generic filler ({fillers} stock phrases, {overlap:.0%} of the instruction's content words)"


# --- checks for the shirkers a length or phrase rule misses ------------------------------------------------

_FENCE_RE = re.compile(r"^\s*(?:```|~~~)", re.M)
_CODE_RE = re.compile(r"```.*?(?:```|\Z)|~~~.*?(?:~~~|\Z)|`[^`\n]+`", re.S)
_BARE_MARKER_RE = re.compile(r"^(?:[-*+\u2022]|\d{1,3}[.)]|[a-z][.)]|#{1,6}|>)\s*(?:\*\*|__)?\s*$", re.I)
_LIST_LINE_RE = re.compile(r"^\s*(?:[-*+\u2022]|\d{1,3}[.)]|[a-z][.)])\s+\S", re.I)
_STRUCTURE_RE = re.compile(r"^\s*(?:[-*+\u2022]\s|\d{1,3}[.)]\s|#{1,6}\s|\||>\s)|```|\*\*[^*\n]+\*\*|__[^_\n]+__", re.M)
_TRAILING_MARKUP = " \t*_`~"
_CLOSERS = frozenset(".!?\u2026)]}\"'\u201d\u2019\u00bb|")
_OPEN_ENDERS = frozenset(",;:-\u2013\u2014([{/&+=\u201c\u2018")
# A last word that cannot end a sentence: articles, conjunctions, prepositions, auxiliaries.
_DANGLING_WORDS = frozenset(
    """a an the and or but nor so yet of to in on at by for with from into onto than as that which who whose
    whom where when while if because although though since unless until is are was were be been being has
    have had will would can could should may might must shall do does did not no very more most their its
    your our his her my this these those such such as e.g i.e like including""".split()
)


def _last_line(text: str) -> str:
    stripped = text.rstrip()
    return stripped[stripped.rfind("\n") + 1 :].strip()


class IncompleteCheck(QualityCheck):
    """A response that stops mid-sentence, on a bare list marker, or inside a code fence: cut off, whatever
    the endpoint's finish_reason said (gateways and retries lose it; some servers say ``stop`` at the cap).

    A last line of several words must end with punctuation; a table row, a short list item, a name or
    sign-off may end bare, unless its last word or character cannot end anything ("... and the", "such as:")
    or it leaves bold text open.
    """

    name = "incomplete"
    reason = Reason.INCOMPLETE
    MIN_SENTENCE_WORDS = 8  # a last line (prose or list item) this long without a full stop was cut

    def _why(self, item: GeneratedItem) -> str | None:
        text = item.output.rstrip()
        if not text:
            return None
        if ("```" in text or "~~~" in text) and len(_FENCE_RE.findall(text)) % 2:
            return "ends inside an unclosed code fence"
        line = _last_line(text)
        if _BARE_MARKER_RE.match(line):
            return f"ends on a bare list marker or heading {line!r}"
        end = line.rstrip(_TRAILING_MARKUP)
        if not end:
            return None
        last = end[-1]
        if last in _CLOSERS or unicodedata.category(last) in ("So", "Sk"):
            return None
        if last in _OPEN_ENDERS:
            return f"ends on {last!r}"
        tail = end.rsplit(None, 1)[-1].lower().strip("*_\"'()")
        if tail in _DANGLING_WORDS:
            return f"ends mid-sentence on {tail!r}"
        if line.count("**") % 2:
            return "ends inside unclosed bold text"
        if line.startswith(("|", "#", ">", "    ")):
            return None
        n_words = len(line.split())
        if n_words >= self.MIN_SENTENCE_WORDS:
            return "last sentence has no ending"
        # A short bare last line is a sign-off, a name or a poem line unless it reads as a sentence start.
        if not _LIST_LINE_RE.match(line) and n_words >= 3 and not all(w[:1].isupper() for w in line.split()):
            return "last sentence has no ending"
        return None

    def check(self, item: GeneratedItem) -> Reason | None:
        return self.reason if self._why(item) else None

    def explain(self, item: GeneratedItem) -> str:
        return f"incomplete: {self._why(item)}"


# Words that only frame a request ("provide concrete examples", "explain in detail"): sharing them says
# nothing about whether the response is on the instruction's topic.
_TASK_WORDS = frozenset(
    _stem(w)
    for w in """explain explanation describe description provide include discuss consider concrete specific
    example examples detail details detailed answer question response respond write create give offer outline
    suggest recommend please could would also particular way ways approach approaches insight insights
    understand understanding relat related relevant especially expertise ensure effective effectively
    practical potential key aspect aspects factor factors different various certain important""".split()
)


_FRAMING_STEMS: frozenset[str] = frozenset()  # _TASK_WORDS and the vague words, set below


_CREATIVE_RE = re.compile(
    r"\b(?:poems?|poetry|verses?|stor(?:y|ies)|tales?|haiku|limerick|sonnet|song|lyrics|jokes?|riddle|fiction"
    r"|fable|slogan|tagline|names?|metaphor|dialogue|scene)\b",
    re.I,
)


class OffTopicCheck(QualityCheck):
    """A response that does not address its instruction: it uses almost none of the instruction's content words.

    Framing words ("provide concrete examples") do not count as shared content. A substantial instruction
    (``min_instruction_words``) is judged by the share it uses (``min_overlap``); a short one (5 words or more)
    only when the response uses none of its content words and none of the item's skill words either (the
    instruction's topic), and the ``[embed]`` model (when installed) finds the two unrelated. A prompt shorter
    still ("Say 5.") leaves nothing to compare.
    """

    name = "off_topic"
    reason = Reason.OFF_TOPIC
    MIN_ASKED_WORDS = 6
    MIN_RESPONSE_WORDS = 20
    MIN_FUNCTION_WORD_SHARE = 0.2
    MIN_SHORT_INSTRUCTION_WORDS = 5
    MIN_SHORT_ASKED_WORDS = 2

    MAX_SHORT_SIMILARITY = 0.2  # cosine of instruction and response below which a short one is off topic

    def __init__(self, min_overlap: float, min_instruction_words: int, embed: Embed | None = None) -> None:
        self.min_overlap = min_overlap
        self.min_instruction_words = min_instruction_words
        self.embed = embed  # a short instruction is judged only with the model: words alone miss paraphrase

    def _unrelated(self, item: GeneratedItem) -> bool:
        """Whether the model finds the response unrelated to a short instruction (False without the model)."""
        if self.embed is None:
            return False
        try:
            vectors = self.embed([item.instruction, item.output[:1000]])
        except Exception as exc:
            _log.warning("off_topic: the embedding model failed; short instructions are not judged (%s)", exc)
            self.embed = None
            return False
        return float(vectors[0] @ vectors[1]) < self.MAX_SHORT_SIMILARITY

    def _measure(self, item: GeneratedItem) -> tuple[int, float]:
        asked = (content_words(item.instruction) | content_words(item.input)) - _FRAMING_STEMS
        if not asked:
            return 0, 1.0
        return len(asked), len(asked & content_words(item.output)) / len(asked)

    def _short(self, item: GeneratedItem) -> bool:
        return len(_words(item.instruction)) < self.min_instruction_words

    def _on_skills(self, item: GeneratedItem) -> bool:
        return bool(item.skills) and bool(_skill_words(item.skills) & content_words(item.output))

    def check(self, item: GeneratedItem) -> Reason | None:
        short = self._short(item)
        if short and len(_words(item.instruction)) < self.MIN_SHORT_INSTRUCTION_WORDS:
            return None
        tokens = _words(item.output)
        if len(tokens) < self.MIN_RESPONSE_WORDS:
            return None
        # Only natural-language prose is judged: code, data, formulas or another language may share few
        # words with the instruction and still answer it. Prose is dense in function words.
        if sum(map(_STOPWORDS.__contains__, tokens)) < self.MIN_FUNCTION_WORD_SHARE * len(tokens):
            return None
        n_asked, overlap = self._measure(item)
        if short:  # few words to compare: only a response sharing none of them, nor its skills' topic
            if n_asked < self.MIN_SHORT_ASKED_WORDS or overlap > 0 or _CREATIVE_RE.search(item.instruction):
                return None  # a poem or a story need not echo its prompt's words
            if self._on_skills(item):
                return None
            # "Summarise the causes of the French Revolution." answered about 1789 and the Estates-General shares
            # no word with it: only the model can tell a paraphrase from an answer to something else
            return self.reason if self._unrelated(item) else None
        return self.reason if n_asked >= self.MIN_ASKED_WORDS and overlap < self.min_overlap else None

    def explain(self, item: GeneratedItem) -> str:
        n_asked, overlap = self._measure(item)
        if self._short(item):
            return f"off topic: uses none of the short instruction's {n_asked} content words, nor its skills'"
        return f"off topic: uses {overlap:.0%} of the instruction's {n_asked} content words"


_REASK_RE = re.compile(
    r"\b(?:you (?:would like|want|wish|are asking|asked|are wondering|need) (?:me )?(?:to know|to explain|to "
    r"describe|for|about|how|what|whether|if)|the question (?:is|asks)|your question (?:is|asks|was)|"
    r"(?:answer|respond|explain|describe)(?: this| it| that)? in (?:one|a single) (?:short |brief )?paragraph|"
    r"in (?:one|a single) paragraph,? (?:please|explain|describe|answer)|to restate|in other words, (?:how|what|why))"
)

# Every alternative of ``_REASK_RE`` contains one of these (keep in step; tests/workers/test_quality.py checks it).
_REASK_LITERALS = ("you ", "question", "paragraph", "restate", "in other words")


class LowNoveltyCheck(QualityCheck):
    """A paraphrased restatement: few of the response's content words are new compared with the request.

    A real answer brings its own vocabulary (steps, causes, examples); a re-ask in other words mostly
    recombines the instruction's words. A short response that reads as a re-ask ("you would like to know
    how ...", "answer in one paragraph") needs less evidence.
    """

    name = "low_novelty"
    reason = Reason.LOW_NOVELTY
    MIN_RESPONSE_CONTENT = 6
    REASK_MAX_WORDS = 120
    REASK_NOVELTY = 0.6

    def __init__(self, min_novelty: float) -> None:
        self.min_novelty = min_novelty

    def _novelty(self, item: GeneratedItem) -> tuple[int, float]:
        said = content_words(item.output)
        if not said:
            return 0, 1.0
        asked = content_words(item.instruction) | content_words(item.input)
        return len(said), len(said - asked) / len(said)

    def check(self, item: GeneratedItem) -> Reason | None:
        n_said, novelty = self._novelty(item)
        if n_said < self.MIN_RESPONSE_CONTENT:
            return None
        if novelty < self.min_novelty:
            return self.reason
        if novelty < self.REASK_NOVELTY and len(_words(item.output)) <= self.REASK_MAX_WORDS:
            text = _expanded(item.output)
            questions = text.count("?")
            if any(literal in text for literal in _REASK_LITERALS) and _REASK_RE.search(text):
                return self.reason
            if questions and questions >= max(1, len(_SENTENCE_END_RE.split(text)) // 2):
                return self.reason
        return None

    def explain(self, item: GeneratedItem) -> str:
        _, novelty = self._novelty(item)
        return f"low novelty: only {novelty:.0%} of the response's content words are new"


# Hedges and filler: words that fill a sentence without committing to anything.
_VAGUE_WORDS = frozenset(
    """various numerous many several certain different variety range array aspects aspect factors factor
    elements element things thing stuff overall generally general typically usually often sometimes essentially
    basically ultimately really very quite somewhat perhaps maybe possibly potentially might may could important
    importance crucial key significant significantly essential vital consider considering consideration
    considerations approach approaches context situation situations circumstances depends depending particular
    individual unique broader landscape journey multifaceted nuanced nuances complex complexity complexities
    intricate intricacies interplay dynamic dynamics holistic comprehensive balance balanced mindful thoughtful
    thoughtfully carefully careful meaningful valuable insights insight ways kind sort somehow something someone
    anything everything matter matters area areas topic topics subject process processes idea ideas concept
    concepts level levels extent role impact effective effectively successful success goals needs whole
    simply just actually truly certainly definitely obviously clearly naturally indeed interesting fascinating
    worth noting explore exploring delve navigate navigating foster enhance leverage utilize ensure strive
    embrace realm tapestry myriad plethora countless endless evolving ever stuff lots bit fairly relatively
    rather pretty somewhat arguably likely unlikely appropriate suitable relevant specific specifics manner
    aspects overall perspective perspectives viewpoint considerations outcomes outcome results result benefit
    benefits challenges challenge opportunities opportunity growth development improve improvement better best
    good great positive negative""".split()
)
_FRAMING_STEMS = _TASK_WORDS | frozenset(_stem(w) for w in _VAGUE_WORDS)
_NUMBER_RE = re.compile(r"(?<![A-Za-z])\d[\d.,:%/]*")
_NAME_RE = re.compile(r"(?<=[a-z,;] )[A-Z][A-Za-z'\-]+")
_EXAMPLE_RE = re.compile(
    r"\b(?:for example|for instance|e\.g\.|such as|i\.e\.|like (?:a|an|the) \w+ (?:that|which|where|with|of)"
    r"|(?:two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|fifty|hundred|thousand|twice"
    r"|half|dozen)\b)",
    re.I,
)
_QUOTED_RE = re.compile(r"[\"\u201c][^\"\u201d\n]{3,80}[\"\u201d]")


def _specifics(item: GeneratedItem, enough: float = float("inf")) -> int:
    """Concrete details the instruction did not already give: new numbers and names, code, list items,
    bold terms, quoted phrases and examples. Counting stops once past ``enough``."""
    text = item.output
    count = 3 * len(_CODE_RE.findall(text)) if "`" in text else 0
    count += text.count("**") // 2
    if "\n" in text:
        count += len(_LIST_LINE_RE.findall(text))
    if count > enough:
        return count
    asked = set(_words(item.instruction))
    count += sum(1 for n in _NUMBER_RE.findall(text) if n.rstrip(".,:") not in asked)
    if count > enough:
        return count
    count += sum(1 for n in _NAME_RE.findall(text) if n.lower() not in asked)
    count += len(_QUOTED_RE.findall(text)) + len(_EXAMPLE_RE.findall(text))
    return count


class VaguenessCheck(QualityCheck):
    """The lazy shirker at any length: hedges and filler words, stock phrases, and no specifics.

    score = filler per 100 words / (1 + specifics per 100 words), where specifics are what the
    instruction did not already supply (new numbers and names, code, list items, examples, quotes).
    A padded answer has a high filler density and almost nothing specific; a real answer may hedge, but
    carries numbers, names, steps or examples.
    """

    name = "vague"
    reason = Reason.VAGUE
    MIN_WORDS = 40

    def __init__(self, max_vagueness: float) -> None:
        self.max_vagueness = max_vagueness

    def _filler_rate(self, item: GeneratedItem) -> float:
        tokens = _words(item.output)
        return 100 * sum(map(_VAGUE_WORDS.__contains__, tokens)) / max(len(tokens), 1)

    def _measure(self, item: GeneratedItem) -> tuple[float, float, float]:
        filler_rate, n = self._filler_rate(item), max(len(_words(item.output)), 1)
        # The score can only exceed the threshold while specifics stay under this count.
        enough = n * (filler_rate / self.max_vagueness - 1) / 100
        specific_rate = 100 * _specifics(item, enough) / n
        return filler_rate, specific_rate, filler_rate / (1 + specific_rate)

    def check(self, item: GeneratedItem) -> Reason | None:
        if len(_words(item.output)) < self.MIN_WORDS:
            return None
        if self._filler_rate(item) <= self.max_vagueness:  # vague however few the specifics: skip counting
            return None
        return self.reason if self._measure(item)[2] > self.max_vagueness else None

    def explain(self, item: GeneratedItem) -> str:
        filler, specific, score = self._measure(item)
        return f"vague: {filler:.0f} filler words and {specific:.1f} specifics per 100 words (score {score:.1f})"


class LengthTracker:
    """Running median of a job's response lengths over its last ``size`` responses (a sorted window)."""

    def __init__(self, size: int = 512) -> None:
        self.size = size
        self.seen = 0
        self._window: deque[int] = deque()
        self._sorted: list[int] = []

    def add(self, n_words: int) -> None:
        self.seen += 1
        self._window.append(n_words)
        bisect.insort(self._sorted, n_words)
        if len(self._window) > self.size:
            del self._sorted[bisect.bisect_left(self._sorted, self._window.popleft())]

    def median(self) -> float | None:
        if not self._sorted:
            return None
        n = len(self._sorted)
        return float(self._sorted[n // 2]) if n % 2 else (self._sorted[n // 2 - 1] + self._sorted[n // 2]) / 2


# The instruction itself asks for a short answer: one paragraph or a tweet is then the right shape.
_BRIEF_REQUEST_RE = re.compile(
    r"\b(?:briefly|concise(?:ly)?|succinct(?:ly)?|one-liner|tweet|haiku|limerick|slogan|tagline|caption|headline"
    r"|subject line|(?:short|brief|quick) (?:answer|reply|response|paragraph|summary|note|message|bio|post|text)"
    r"|in (?:one|a|a single|two|three|\d+) (?:short )?(?:sentences?|paragraph|lines?|words?)"
    r"|(?:under|at most|no more than|fewer than|less than|maximum of|max) \d+ words|\d+ words or (?:less|fewer)"
    r"|(?:one|single|two|three|\d+)[ -](?:sentence|line|word)s?\b)",
    re.I,
)


def _substantial(item: GeneratedItem, min_words: int) -> bool:
    """The instruction is long enough to deserve a developed answer and does not ask for a short one."""
    return len(_words(item.instruction)) >= min_words and not _asks_for_brevity(item.instruction)


@lru_cache(maxsize=256)
def _asks_for_brevity(instruction: str) -> bool:
    return _BRIEF_REQUEST_RE.search(instruction) is not None


class OneParagraphCheck(QualityCheck):
    """The paper's second shirker: a substantial instruction answered "in one paragraph".

    A single block of prose (at most two lines, no blank line, no list, heading, table, bold term or
    code) shorter than ``max_words``, or than ``MEDIAN_SHARE`` of the job's median once that is known.
    """

    name = "one_paragraph"
    reason = Reason.ONE_PARAGRAPH
    MEDIAN_SHARE = 0.8

    def __init__(self, lengths: LengthTracker, max_words: int, min_instruction_words: int, min_items: int) -> None:
        self.lengths = lengths
        self.max_words = max_words
        self.min_instruction_words = min_instruction_words
        self.min_items = min_items

    def _limit(self) -> float:
        median = self.lengths.median()
        if median is None or self.lengths.seen < self.min_items:
            return self.max_words
        return max(self.max_words, self.MEDIAN_SHARE * median)

    def check(self, item: GeneratedItem) -> Reason | None:
        text = item.output.strip()  # the same words as the unstripped output
        if len(_words(item.output)) >= self._limit() or text.count("\n") > 1:
            return None
        if not _substantial(item, self.min_instruction_words) or _STRUCTURE_RE.search(text):
            return None
        return self.reason

    def explain(self, item: GeneratedItem) -> str:
        return f"a single unstructured paragraph of {len(_words(item.output))} words (< {self._limit():.0f})"


class TooBriefCheck(QualityCheck):
    """Far shorter than this job's typical response (``ratio`` x the running median), once ``min_items``
    responses have been seen; judged only for substantial instructions."""

    name = "too_brief"
    reason = Reason.TOO_BRIEF

    def __init__(self, lengths: LengthTracker, ratio: float, min_items: int, min_instruction_words: int) -> None:
        self.lengths = lengths
        self.ratio = ratio
        self.min_items = min_items
        self.min_instruction_words = min_instruction_words

    def _limit(self) -> float | None:
        median = self.lengths.median()
        return None if median is None or self.lengths.seen < self.min_items else self.ratio * median

    def check(self, item: GeneratedItem) -> Reason | None:
        limit = self._limit()
        if limit is None or len(_words(item.output)) >= limit:
            return None
        return self.reason if _substantial(item, self.min_instruction_words) else None

    def explain(self, item: GeneratedItem) -> str:
        n, median = len(_words(item.output)), self.lengths.median() or 0.0
        return f"{n} words, under {self.ratio:.0%} of the job's median {median:.0f}"


_FILL_IN = ("[",)
# A letter, email or template the user will complete: "[Your Name]" there is a field for them, not a leak.
_DOCUMENT_RE = re.compile(
    r"\b(?:e-?mails?|letters?|messages?|templates?|memos?|invitations?|proposals?|notes?|posts?|announcements?"
    r"|newsletters?|scripts?|speech|forms?|press release|cv|resume|résumé|bio|outreach|pitch)\b",
    re.I,
)


@lru_cache(maxsize=256)
def _asks_for_document(instruction: str) -> bool:
    return _DOCUMENT_RE.search(instruction) is not None


# One pattern per opening character, each tried only when that character occurs (a literal first
# character lets the regex engine skip ahead fast).
_PLACEHOLDER_RES = [
    # {{your_answer}}, {response}, {your_answer}; not LaTeX (\frac{a}{b}, x^{2}) or $-expressions
    (
        ("{",),
        re.compile(
            r"\{\{\s*[A-Za-z_][\w .'-]{0,40}\s*\}\}"
            r"|(?<![\\$^_a-zA-Z])\{(?:[a-z]+_)*(?:response|answer|output|instruction|input|question|text|content"
            r"|name|topic|placeholder|example|value)(?:_[a-z]+)*\}",
            re.I,
        ),
    ),
    # [Your Name], [Insert date], [Company Name]; not a markdown link [text](url)
    (
        _FILL_IN,
        re.compile(
            r"\[(?:your|insert|enter|add|recipient|company|client|customer|candidate|manager|employee|first|last"
            r"|full|date|name|address|phone|email|placeholder|todo|tbd|xx+)\b[^\]\n]{0,40}\](?!\()",
            re.I,
        ),
    ),
    (("<",), re.compile(r"<(?:insert|your|enter|add|placeholder|todo)\b[^<>\n]{0,60}>", re.I)),
    (
        ("ipsum", "Ipsum", "r here", "e here", "t here", "s here", "r Here", "e Here", "t Here", "HERE"),
        re.compile(
            r"\b(?:lorem ipsum|insert (?:your )?(?:answer|response|text|content) here"
            r"|(?:your|the) (?:answer|response) (?:goes )?here)\b",
            re.I,
        ),
    ),
]


# Inside code, braces and brackets are syntax (``arr[i]``, ``dict[str, int]``, ``<div>``, ``{x}``): only a
# bracket holding the words of a field to fill in is a placeholder there (``[insert description here]``,
# ``<your name>``, ``{placeholder}``).
_CODE_PLACEHOLDER_RE = re.compile(
    r"[\[<{]\s*(?:(?:insert|enter|your|placeholder|todo)(?:\b|_)|(?:add|fill in|type|put) )[^\[\]<>{}\n]{0,60}[\]>}]"
    r"|[\[<{][^\[\]<>{}\n]{0,60}\b(?:goes )?here\s*[\]>}]",
    re.I,
)
# A field for generated content itself ("[insert response here]", "<your answer>"): a leak even in a letter.
_CONTENT_FIELD_RE = re.compile(
    r"\b(?:response|answer|instruction|question|output|description|explanation|content|text|code)\b", re.I
)


class PlaceholderCheck(QualityCheck):
    """Leaked template or placeholder text, in the instruction (and input) as well as the response:
    ``{{your_answer}}``, ``{response}``, ``[Your Name]``, ``<insert example>``, ``[insert response here]``.

    In code (fenced or inline) only fill-in brackets count (``[insert description here]``, ``<your name>``,
    ``{placeholder}``), never syntax such as ``arr[i]`` or ``{x}``. Bracketed personal fields ("[Your Name]",
    "[Date]") are allowed when the instruction asks for a letter, email, template or similar document the
    user completes; a field for the generated content itself ("[insert response here]") never is."""

    name = "placeholder"
    reason = Reason.PLACEHOLDER

    def _find_in(self, text: str, document: bool) -> str | None:
        if "`" in text or "~~~" in text:
            for span in _CODE_RE.findall(text):
                if match := _CODE_PLACEHOLDER_RE.search(span):
                    return match.group(0)
            text = _CODE_RE.sub(" ", text)
        for openings, pattern in _PLACEHOLDER_RES:
            if len(openings) == 1:
                if openings[0] not in text:
                    continue
            elif not (("ere" in text or "ERE" in text or "psum" in text) and any(o in text for o in openings)):
                continue  # every multi-character opening contains "ere", "ERE" or "psum"
            for match in pattern.finditer(text):
                if openings is _FILL_IN and document and not _CONTENT_FIELD_RE.search(match.group(0)):
                    continue
                return match.group(0)
        return None

    def _find(self, item: GeneratedItem) -> tuple[str, str] | None:
        document = _asks_for_document(item.instruction)
        for side, text in (("response", item.output), ("instruction", item.instruction), ("input", item.input)):
            if text and (found := self._find_in(text, document)):
                return side, found
        return None

    def check(self, item: GeneratedItem) -> Reason | None:
        return self.reason if self._find(item) else None

    def explain(self, item: GeneratedItem) -> str:
        found = self._find(item)
        return f"placeholder text {found[1]!r} in the {found[0]}" if found else "placeholder text"


# Read against ``_expanded`` text (lower case, "I'm" -> "i am", "here's" -> "here is").
# Talk about the exchange itself: the model wrote an assistant's reply, or a note about its own draft.
_META_RE = re.compile(
    r"^(?:sure|certainly|of course|absolutely|okay|ok|great|here you go|happy to help)\b\s*[,!.:]"
    r"|\bi am (?:ready|happy|glad|here|able|going|more than happy) to (?:help|assist)\b"
    r"|\bi would (?:be (?:happy|glad|delighted) to|love to) (?:help|assist)\b"
    r"|\b(?:here is|here are|below is|this is) (?:the|a|an|my|your) (?:revised|rewritten|improved|updated|edited"
    r"|modified|refined|reworded|new|final|corrected) (?:instructions?|responses?|answers?|prompts?|questions?"
    r"|query|version)\b"
    r"|\bas an (?:ai|artificial intelligence|assistant|language model)\b"
    r"|\bi hope (?:this|that) helps\b"
)
# An answer posing as the question: "The correct answer is: 2.5."
_ANSWER_RE = re.compile(
    r"^(?:the )?(?:correct |right |final |short )?(?:answer|solution|result|output|response)(?: is| would be)?\s*[:=]"
    r"|\bthe (?:correct|right|final) (?:answer|solution|result) (?:is|would be)\b"
)
_IMPERATIVES = (
    "act address adjust advise analyse analyze answer apply argue assess assist break brainstorm build calculate"
    " check choose clarify classify code compare complete compose condense consider construct convert convince"
    " correct craft create critique debug decide define defend delve demonstrate derive describe design detail"
    " detect determine develop devise diagnose discuss document draft draw edit elaborate ensure estimate evaluate"
    " examine explain explore expand extend find fix focus formulate generate give guide help highlight identify"
    " illustrate imagine implement improve include incorporate interpret introduce investigate judge justify"
    " let list make map modify name narrate offer optimise optimize organise organize outline paraphrase persuade"
    " pick plan plot predict prepare present pretend prioritise prioritize produce program proofread propose prove"
    " provide rank rate recommend refactor reflect reply rephrase respond review revise rewrite reword role-play"
    " select set share shorten show simplify simulate sketch solve sort spot state suggest summarise summarize"
    " support take teach tell test transform translate troubleshoot update use verify walk write return print"
    " count sum add remove replace insert merge split parse reverse read load format output encode decode"
    " find sort filter group rename fetch"
).split()
# What any request a user makes has: a question, a polite or first-person ask, or an imperative opening a
# sentence or clause. Every one of the 1,000 real Instruct-SkillMix instructions has one.
_REQUEST_CUE_RE = re.compile(
    r"\?|\b(?:please|kindly|can you|could you|would you|will you|help me|i need|i want|i would like"
    r"|i would (?:appreciate|love)|i am (?:looking|seeking|hoping|wondering|curious)|i seek|seeking (?:advice|help"
    r"|guidance|suggestions|recommendations|tips|ideas)|looking for|i wonder|any (?:advice|tips|suggestions|ideas"
    r"|recommendations)|your (?:advice|help|guidance|suggestions|thoughts|input|expertise|recommendations|insights?"
    r"|opinion|feedback)|tell me|show me|let me know|what|how|why|which|whether|who|when|where)\b"
    r"|(?:^|[.!:;\n]\s*|\band |, )[\"'*#>\s]*(?:" + "|".join(_IMPERATIVES) + r")\b"
)


class NotARequestCheck(QualityCheck):
    """An instruction that is not a request a user would make: the model's talk about the exchange ("I'm
    ready to help you edit this response", "Here is the revised instruction"), an answer posing as the
    question ("The correct answer is: 2.5. I am not sure about the other part."), or a fragment with no
    question, ask or imperative at all. Training on it teaches the model to answer things nobody asks."""

    name = "not_a_request"
    reason = Reason.NOT_A_REQUEST
    HEAD_CHARS = 300  # meta-talk opens the text; further down it may be a quoted draft
    MIN_STATEMENT_WORDS = 5  # "Hi", "Thanks!" are turns a user writes; too_short judges them

    def _why(self, item: GeneratedItem) -> str | None:
        text = _expanded(item.instruction)
        if not text:
            return None
        if match := _META_RE.search(text[: self.HEAD_CHARS]):
            return f"talks about the exchange: {match.group(0)!r}"
        if (match := _ANSWER_RE.search(text)) and "?" not in text:
            return f"an answer, not a question: {match.group(0)!r}"
        if len(_words(item.instruction)) >= self.MIN_STATEMENT_WORDS and not _REQUEST_CUE_RE.search(text):
            return "no question, ask or imperative"
        return None

    def check(self, item: GeneratedItem) -> Reason | None:
        return self.reason if self._why(item) else None

    def explain(self, item: GeneratedItem) -> str:
        return f"not a request: {self._why(item)}"


_GENERIC_SKILL_WORDS = frozenset(_stem(w) for w in "skill skills ability knowledge basic general".split())


def _skill_words(skills: list[str]) -> frozenset[str]:
    return frozenset(content_words(" ".join(skills).replace("_", " "))) - _GENERIC_SKILL_WORDS


class IgnoresSkillsCheck(QualityCheck):
    """The response touches none of the item's skills: not one (crudely stemmed) word of any skill name.

    Lenient on purpose: any single word of any skill is enough, and the item is judged only when its
    instruction names at least one skill word, since a skill can be exercised without being named
    ("snake_case_names" in code, "empathy" in a reply) and the instruction then shows none either.
    """

    name = "ignores_skills"
    reason = Reason.IGNORES_SKILLS

    def check(self, item: GeneratedItem) -> Reason | None:
        if not item.skills:
            return None
        wanted = _skill_words(item.skills)
        if not wanted or not wanted & content_words(item.instruction):
            return None
        return None if wanted & content_words(item.output) else self.reason

    def explain(self, item: GeneratedItem) -> str:
        return f"uses none of the words of its skills {', '.join(item.skills)}"


_log = logging.getLogger(__name__)
Embed = Callable[[Sequence[str]], Any]  # texts -> unit-length row vectors (``workers.curate.semantic.embed``)


class NoSkillShownCheck(QualityCheck):
    """Neither side of the pair exhibits any of the item's skills (cooking_techniques + python_programming
    answered with a poem about the sea): the example teaches nothing of what it was made for.

    A skill is exhibited when the instruction, input or response uses a word of its name, or two words of its
    description (the job's skill set; the judge reads the same). Only when none is, and an ``embed`` function
    is given (the ``[embed]`` model, when installed), the example's opening is embedded and compared with
    each skill's "name: description" (cosine, all-MiniLM-L6-v2); a skill at or above ``min_similarity``
    counts as exhibited. So the model runs only on the few examples the words found nothing in, and the
    check rejects only what both measures agree on.
    """

    name = "no_skill_shown"
    reason = Reason.NO_SKILL_SHOWN
    MIN_DESCRIPTION_HITS = 2
    EMBED_CHARS = 1200  # the model reads 256 tokens: the instruction and the response's opening

    def __init__(self, descriptions: dict[str, str], min_similarity: float, embed: Embed | None = None) -> None:
        self.descriptions = descriptions
        self.min_similarity = min_similarity
        self.embed = embed  # ``workers.curate.semantic.embed`` when the [embed] extra is installed
        self._definitions: dict[str, Any] = {}  # skill name -> embedding of its definition
        self._last: tuple[GeneratedItem, tuple[bool, float | None]] | None = None  # explain reuses check's

    def _definition(self, skill: str) -> str:
        words = skill.replace("_", " ")
        description = self.descriptions.get(skill, "")
        return f"{words}: {description}" if description else words

    def _lexical(self, item: GeneratedItem) -> bool:
        said = content_words(item.instruction) | content_words(item.input) | content_words(item.output)
        for skill in item.skills:
            if _skill_words([skill]) & said:
                return True
            described = content_words(self.descriptions.get(skill, "")) - _FRAMING_STEMS - _GENERIC_SKILL_WORDS
            if len(described & said) >= self.MIN_DESCRIPTION_HITS:
                return True
        return False

    def _similarity(self, item: GeneratedItem) -> float | None:
        """The best cosine of the example with a skill's definition; None without the model."""
        if self.embed is None:
            return None
        try:
            missing = [s for s in item.skills if s not in self._definitions]
            if missing:
                vectors = self.embed([self._definition(s) for s in missing])
                self._definitions.update(zip(missing, vectors, strict=True))
            text = "\n".join(t for t in (item.instruction, item.input, item.output) if t)[: self.EMBED_CHARS]
            example = self.embed([text])[0]
        except Exception as exc:  # the words alone decide from now on
            _log.warning("no_skill_shown: the embedding model failed, words only from now on (%s)", exc)
            self.embed = None
            return None
        return max(float(self._definitions[s] @ example) for s in item.skills)

    def _measure(self, item: GeneratedItem) -> tuple[bool, float | None]:
        """(shown by words, best similarity when the words showed none and the model is there)."""
        if self._last is not None and self._last[0] is item:
            return self._last[1]
        measured = (True, None) if self._lexical(item) else (False, self._similarity(item))
        self._last = (item, measured)
        return measured

    def check(self, item: GeneratedItem) -> Reason | None:
        if not item.skills:
            return None
        shown, similarity = self._measure(item)
        if shown or (similarity is not None and similarity >= self.min_similarity):
            return None
        return self.reason

    def explain(self, item: GeneratedItem) -> str:
        _, similarity = self._measure(item)
        text = f"exhibits none of its skills {', '.join(item.skills)}: no word of their names or descriptions"
        return text + (f", similarity {similarity:.2f} < {self.min_similarity}" if similarity is not None else "")


class JudgeCheck(QualityCheck):
    """The LLM judge (``quality.judge``, ``workers/curate/judge.py``) failed the item in the generate stage.

    Items without a judge verdict (judge off, or the item failed before it was judged) pass this check."""

    name = "judge"
    reason = Reason.JUDGE_REJECTED

    def check(self, item: GeneratedItem) -> Reason | None:
        return self.reason if item.judge is not None and not item.judge.verdict else None

    def explain(self, item: GeneratedItem) -> str:
        return f"judge: {item.judge.reason}" if item.judge is not None else "judge"
