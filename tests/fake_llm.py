"""A fake OpenAI-compatible chat endpoint: real HTTP, deterministic answers, planted faults, a rate limit.

    python -m tests.fake_llm --host 127.0.0.1 --port 0 --rpm 600 --latency-ms 300

prints its base URL (``http://HOST:PORT/v1``) as the first stdout line. Every ``FakeConfig`` field is
also a ``--kebab-case`` flag and can be changed at runtime with ``POST /admin/config``.

Answers depend only on the messages and ``seed`` (sha256 key), so reruns are reproducible; faults that
concern the *content* (duplicates, shirking, refusals, cut-offs) are decided by the same key, while
transport faults (5xx, hangs, malformed bodies) come from a seeded RNG in arrival order.

It also serves OpenAI's Files + Batch API (``tests/fake_batch.py``, docs/batch-fake.md): a batch line gets
the answer this route would give its body.
"""

import argparse
import asyncio
import hashlib
import math
import random
import re
import socket
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import uvicorn
from pydantic import ConfigDict, Field, ValidationError, model_validator
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from tests.fake_batch import BatchConfig, BatchStore, Guard, LineAnswer, json_response, openai_error

DESCRIPTION = "A fake OpenAI-compatible chat endpoint for tests and benchmarks."
DEFAULT_MODEL = "fake-model"
REFUSAL = "I'm sorry, but I can't help with that."
PAIR_MARKER = "## Instruction"
INSTRUCTION_PROPS = ("instruction", "question", "prompt", "problem", "task", "query")
KEEP_ALIVE_S = 60  # longer than httpx's 5 s pool expiry, so clients close idle connections first
RECENT_S = 10  # seconds of per-second admission counts kept for /admin/stats
RECENT_REQUESTS = 64  # last request bodies kept for /admin/requests


class FakeConfig(BatchConfig):
    """Everything tunable; rates are probabilities in [0, 1]. The batch knobs come from ``BatchConfig``."""

    model_config = ConfigDict(extra="forbid")

    rpm: int = Field(0, ge=0, description="requests per minute; 0 = unlimited")
    burst_s: float = Field(1.0, gt=0, description="bucket capacity in seconds of rpm")
    latency_ms: float = Field(0.0, ge=0, description="delay before every admitted answer")
    latency_jitter_ms: float = Field(0.0, ge=0, description="extra uniform random delay")
    capacity: int = Field(
        0,
        ge=0,
        description="requests served at once, the rest wait in a queue as on vLLM (latency = queueing + "
        "latency_ms); 0 = no limit",
    )
    prose_words: int = Field(80, ge=1, description="length of non-pair answers")
    exact_dup_rate: float = Field(0.0, ge=0, le=1, description="pair copied from a canned pair")
    near_dup_rate: float = Field(0.0, ge=0, le=1, description="canned instruction with 2 words changed")
    shirker_rate: float = Field(0.0, ge=0, le=1, description="lazy response")
    refusal_rate: float = Field(0.0, ge=0, le=1, description="response is a refusal")
    cutoff_rate: float = Field(0.0, ge=0, le=1, description="answer truncated, finish_reason=length")
    error_rate: float = Field(0.0, ge=0, le=1, description="random 500/503")
    hang_rate: float = Field(0.0, ge=0, le=1, description="sleep hang_s before answering")
    hang_s: float = Field(30.0, ge=0)
    malformed_rate: float = Field(0.0, ge=0, le=1, description="200 with a broken body")
    storm: int = Field(0, ge=0, description="the next N requests get 429")
    storm_retry_after_s: float = Field(1.0, gt=0, description="retry-after of storm 429s")
    storm_s: float = Field(0.0, ge=0, description="every request gets 429 for this long from when set")
    fail_next: int = Field(0, ge=0, description="the next N admitted requests get fail_status")
    fail_status: int = Field(503, ge=400, le=599)
    hang_next: int = Field(0, ge=0, description="the next N admitted requests hang")
    malformed_next: int = Field(0, ge=0, description="the next N admitted requests get a broken body")
    max_context_words: int = Field(0, ge=0, description="400 if prompt words + max_tokens exceed; 0 = off")
    require_key: str | None = Field(None, description="401 unless 'Authorization: Bearer KEY'")
    model_strict: str | None = Field(None, description="404 for any other model")
    fault_seed: int = Field(0, description="seed of the transport-fault RNG")
    ratelimit_headers: bool = Field(False, description="send OpenAI's x-ratelimit-*-requests headers (needs rpm)")
    # skill extraction (see "skill extraction" below)
    extract_offlist_rate: float = Field(0.0, ge=0, le=1, description="map answers naming a skill not on the list")
    extract_garbage_rate: float = Field(0.0, ge=0, le=1, description="extraction answers that are not JSON")
    # LLM judge (see "judge" below)
    judge_reject_rate: float = Field(0.0, ge=0, le=1, description="judge verdicts that fail a good pair")
    judge_script: dict[str, str] = Field(
        default_factory=dict,
        description="scripted judge: sha256 hex of a response (stripped) -> good, bad, or a score 1-5 (JSON)",
    )
    judge_noise: float = Field(0.0, ge=0, le=1, description="scripted good/bad labels the judge gets backwards")
    judge_malformed_rate: float = Field(
        0.0, ge=0, le=1, description="scripted judge answers that are not JSON (per response and attempt)"
    )
    # MATH^2 recipe (see "math" below)
    math_invalid_pair_rate: float = Field(0.0, ge=0, le=1, description="skill pairs judged invalid (by pair)")
    math_rubric_fail_rate: float = Field(0.0, ge=0, le=1, description="rubric validations answering No")
    math_solve_disagree_rate: float = Field(0.0, ge=0, le=1, description="solves giving a wrong, distinct number")
    math_wrong_answer_rate: float = Field(0.0, ge=0, le=1, description="questions stating a wrong own answer")
    # eval-math (see "eval" below)
    eval_wrong_rate: float = Field(0.0, ge=0, le=1, description="eval answers that are wrong (by question)")
    eval_notation_rate: float = Field(0.0, ge=0, le=1, description="right eval answers in another notation")
    eval_bad_steps_rate: float = Field(0.0, ge=0, le=1, description="right eval answers reached by wrong steps")

    @model_validator(mode="after")
    def _planted_rates_fit(self) -> "FakeConfig":
        planted = self.exact_dup_rate + self.near_dup_rate + self.shirker_rate
        if planted + self.refusal_rate + self.cutoff_rate > 1.0:
            raise ValueError("planted fault rates must sum to at most 1")
        return self


# --- deterministic text -------------------------------------------------------------------------


def _vocabulary(size: int = 2400) -> list[str]:
    """Made-up two-syllable words from a fixed seed: plenty of distinct words, same in every process."""
    onsets = "b br c ch cl d dr f fl g gr h j k l m n p pl pr qu r s sh sk sl st t th tr v w z".split()
    vowels = "a e i o u ai ea io ou".split()
    codas = ["", "n", "r", "s", "l", "m", "nd", "st", "x", "k"]
    rng = random.Random(20240601)
    words: dict[str, None] = {}
    while len(words) < size:
        words["".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(2))] = None
    return list(words)


VOCAB = _vocabulary()
VERBS = "Explain Describe Compare Summarize Outline Analyze Justify Evaluate Illustrate Critique".split()
SHIRKS = ("Sure, here is a quick answer: it depends on the situation.", "That is a good question.")
_WORD = re.compile(r"\S+")


def _sentences(rng: random.Random, n_words: int) -> str:
    words = rng.choices(VOCAB, k=n_words)
    out, i = [], 0
    while i < n_words:
        k = rng.randint(8, 14)
        out.append(" ".join(words[i : i + k]).capitalize() + ".")
        i += k
    return " ".join(out)


def _instruction(rng: random.Random) -> str:
    return f"{rng.choice(VERBS)} {_sentences(rng, rng.randint(35, 43))}"


def _response(rng: random.Random) -> str:
    return _sentences(rng, rng.randint(230, 270))


CANNED = [(_instruction(r), _response(r)) for r in (random.Random(f"canned-{i}") for i in range(3))]


def truncate_words(text: str, n: int) -> str:
    """The first ``n`` whitespace-separated words, original spacing kept."""
    for i, match in enumerate(_WORD.finditer(text)):
        if i == n - 1:
            return text[: match.end()]
    return text


def word_count(text: str) -> int:
    return len(text.split())


@dataclass
class Pair:
    instruction: str
    response: str
    fault: str | None = None  # exact_dup, near_dup, shirker, refusal, cutoff


def _shown(skills: Sequence[str]) -> str:
    return f"Drawing on {' and '.join(s.replace('_', ' ') for s in skills)}: " if skills else ""


_SKILL_LINE = re.compile(r"^- ([a-z][a-z0-9]*(?:_[a-z0-9]+)*)(?::|$)", re.M)


def make_pair(digest: bytes, config: FakeConfig, skills: Sequence[str] = ()) -> Pair:
    """An instruction/response pair; the key's hash decides which planted fault (if any) it carries. A good
    response opens by naming the ``skills`` the prompt listed, as a real model exhibits them."""
    u = int.from_bytes(digest[:8]) / 2**64
    rng = random.Random(int.from_bytes(digest[8:16]))
    edges = [
        ("exact_dup", config.exact_dup_rate),
        ("near_dup", config.near_dup_rate),
        ("shirker", config.shirker_rate),
        ("refusal", config.refusal_rate),
        ("cutoff", config.cutoff_rate),
    ]
    fault, acc = None, 0.0
    for name, rate in edges:
        acc += rate
        if u < acc:
            fault = name
            break
    if fault == "exact_dup":
        canned_instruction, canned_response = CANNED[rng.randrange(len(CANNED))]
        return Pair(canned_instruction, _shown(skills) + canned_response, fault=fault)
    if fault == "near_dup":
        words = CANNED[rng.randrange(len(CANNED))][0].split(" ")
        for pos in rng.sample(range(1, len(words)), 2):  # never the leading verb
            words[pos] = rng.choice(VOCAB) + ("." if words[pos].endswith(".") else "")
        return Pair(" ".join(words), _shown(skills) + _response(rng), fault)
    instruction = _instruction(rng)
    if fault == "shirker":
        lazy = f"Answer in one paragraph: {instruction}" if rng.random() < 0.5 else rng.choice(SHIRKS)
        return Pair(instruction, lazy, fault)
    if fault == "refusal":
        return Pair(instruction, REFUSAL, fault)
    return Pair(instruction, _shown(skills) + _response(rng), fault)


def fill_schema(schema: dict[str, Any], pair: Pair, rng: random.Random) -> Any:
    """A value matching ``schema``: the instruction-like string property gets the instruction."""
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object" or "properties" in schema:
        props: dict[str, Any] = schema.get("properties") or {}
        strings = [k for k, v in props.items() if isinstance(v, dict) and v.get("type") == "string"]
        named = [k for k in strings if k.lower() in INSTRUCTION_PROPS]
        lead = (named or strings or [""])[0]
        return {k: pair.instruction if k == lead else fill_schema(v, pair, rng) for k, v in props.items()}
    if schema.get("enum"):
        return schema["enum"][0]
    if kind == "array":
        items = schema.get("items") or {"type": "string"}
        if items.get("type", "string") == "string":
            return [_sentences(rng, 6) for _ in range(3)]
        return [fill_schema(items, pair, rng)]
    if kind in ("integer", "number"):
        return 0
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return pair.response


def answer(request: dict[str, Any], messages: list[dict[str, str]], config: FakeConfig) -> tuple[str, str]:
    """(content, planted fault or "") for a validated request; deterministic in messages + seed."""
    hasher = hashlib.sha256()
    for message in messages:
        hasher.update(message["content"].encode())
        hasher.update(b"\x00")
    hasher.update(repr(request.get("seed")).encode())
    digest = hasher.digest()
    rng = random.Random(int.from_bytes(digest[16:24]))
    last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    extracted = answer_extraction(request, last_user, digest, config)
    if extracted is not None:
        return extracted, ""
    judged = answer_judge(request, messages, digest, config)
    if judged is not None:
        return judged
    evaluated = answer_eval(messages, config)
    if evaluated is not None:
        return evaluated
    mathed = answer_math(request, messages, digest, config)
    if mathed is not None:
        return mathed
    helped = answer_review_help(request, messages, digest)
    if helped is not None:
        return helped
    response_format = request.get("response_format")
    schema = None
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema") or {}
    if schema is None and PAIR_MARKER not in last_user:
        return _sentences(rng, config.prose_words), ""
    asked = "\n".join(str(m["content"]) for m in messages if m["role"] == "user")  # the first turn lists them
    pair = make_pair(digest, config, _SKILL_LINE.findall(asked))
    if schema is not None:
        content = orjson.dumps(fill_schema(schema, pair, rng)).decode()
    else:
        content = f"{PAIR_MARKER}\n{pair.instruction}\n\n## Response\n{pair.response}"
    if pair.fault == "cutoff":
        content = truncate_words(content, max(1, word_count(content) * 3 // 5))
    return content, pair.fault or ""


# --- judge --------------------------------------------------------------------------------------
# A request with a user message containing JUDGE_MARKER (workers/curate/templates/judge) is a judge
# request: the answer is a JSON verdict with a score for every criterion named in the prompt's answer
# format ("name": <1-5>). Pairs whose response the fake planted as a shirker (a stock lazy answer or the
# instruction re-asked "in one paragraph") fail with low scores; ``judge_reject_rate`` of the others fail
# too (drawn from the request's hash, so deterministic); the rest pass. With a JSON schema the answer is
# the bare object, otherwise it comes in a ```json fence (the judge must read it leniently). The planted
# fault is "judge_shirker" or "judge_reject".
# A scripted judge (``judge_script``: the sha256 of a response's text -> good / bad / a score) grades the
# responses it names from their hidden labels (``scripted_scores``), gets ``judge_noise`` of them backwards,
# and answers ``judge_malformed_rate`` of its attempts with prose instead of JSON (``scripted_malformed``,
# decided per response and attempt, so whether the retry is readable too is known in advance).

JUDGE_MARKER = "You are grading"
JUDGE_SHIRKER_REASON = "lazy, generic answer that does not answer what was asked"
JUDGE_REJECT_REASON = "the response gets a key fact wrong"
JUDGE_PASS_REASON = "specific, complete answer that uses all its skills"
_JUDGE_CRITERION = re.compile(r'"([^"\n]+)": <1-5>')  # any key: a skill may start with a digit (3d_modeling)
_JUDGE_RESPONSE = re.compile(r"<response>\n(.*?)\n</response>", re.S)


def is_planted_shirker(response: str) -> bool:
    return response.strip() in SHIRKS or response.startswith("Answer in one paragraph: ")


def response_sha(response: str) -> str:
    """The key of a response in ``judge_script``."""
    return hashlib.sha256(response.strip().encode()).hexdigest()


def scripted_malformed(response: str, attempt: int, config: FakeConfig) -> bool:
    """Does the scripted judge answer attempt ``attempt`` (0: first ask, 1: the retry) on ``response`` with junk?"""
    return _stable(response_sha(response), "malformed", attempt) < config.judge_malformed_rate


def scripted_label(response: str, config: FakeConfig) -> str | None:
    """The label the scripted judge acts on: the script's, flipped for ``judge_noise`` of the responses."""
    label = config.judge_script.get(response_sha(response))
    if label in ("good", "bad") and _stable(response_sha(response), "noise") < config.judge_noise:
        return "bad" if label == "good" else "good"
    return label


def scripted_scores(response: str, criteria: list[str], config: FakeConfig) -> tuple[dict[str, int], str] | None:
    """(scores per criterion, verdict) of a scripted response, or None if it is not in the script.

    The overall (lowest) score s: from the script when it gives a number, else drawn by the response's hash:
    a good label 5 (half), 4 (30%) or 3 (20%); a bad one 1, 2 or 3 likewise. One criterion (by hash) gets s,
    the others 5; the verdict passes exactly when s >= 3."""
    label = scripted_label(response, config)
    if label is None:
        return None
    if label in ("good", "bad"):
        u = _stable(response_sha(response), "score")
        level = 0 if u < 0.5 else 1 if u < 0.8 else 2
        score = (5 - level) if label == "good" else (1 + level)
    else:
        score = min(5, max(1, int(label)))
    low = criteria[int(_stable(response_sha(response), "criterion") * len(criteria))]
    return {c: score if c == low else 5 for c in criteria}, "pass" if score >= 3 else "fail"


def answer_judge(
    request: dict[str, Any], messages: list[dict[str, str]], digest: bytes, config: FakeConfig
) -> tuple[str, str] | None:
    """(JSON verdict, planted fault) for a judge request, or None if the request is not one."""
    prompt = next((m["content"] for m in messages if m["role"] == "user" and JUDGE_MARKER in m["content"]), None)
    if prompt is None:
        return None
    found = _JUDGE_RESPONSE.search(prompt)
    response = found.group(1) if found else ""
    criteria = list(dict.fromkeys(_JUDGE_CRITERION.findall(prompt))) or ["overall"]
    scripted = scripted_scores(response, criteria, config)
    if scripted is not None:
        attempt = sum(m["role"] == "assistant" for m in messages)
        if scripted_malformed(response, attempt, config):
            return "I would rate this response fairly well overall, with some weaknesses.", "judge_malformed"
        scores, verdict = scripted
        reason = JUDGE_PASS_REASON if verdict == "pass" else JUDGE_REJECT_REASON
        fault = "" if verdict == "pass" else "judge_scripted_fail"
    elif is_planted_shirker(response):
        scores, verdict, reason, fault = dict.fromkeys(criteria, 1), "fail", JUDGE_SHIRKER_REASON, "judge_shirker"
    elif _stable(digest.hex(), "judge") < config.judge_reject_rate:
        scores = {c: 2 if c == "correct" else 4 for c in criteria}
        verdict, reason, fault = "fail", JUDGE_REJECT_REASON, "judge_reject"
    else:
        scores, verdict, reason, fault = dict.fromkeys(criteria, 5), "pass", JUDGE_PASS_REASON, ""
    body = orjson.dumps({"scores": scores, "verdict": verdict, "reason": reason}).decode()
    response_format = request.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        return body, fault
    return f"```json\n{body}\n```", fault


# --- math ---------------------------------------------------------------------------------------
# The MATH^2 recipe (workers/recipes/math.py) marks each stage's prompt with a "### Task: <stage>" line;
# the last user message's marker says which stage a request is. Every question the fake writes is one line
# whose true answer is a function of its text (``math_truth``), so every later stage can work it out:
#   pair       valid unless the *pair* (sorted names) falls under ``math_invalid_pair_rate`` (by pair, not by
#              request, so a pair is invalid for every job); planted "math_invalid_pair"
#   question   a new question, brief solution and its true answer (``math_wrong_answer_rate`` of them state
#              the true answer + 1: planted "math_wrong_answer")
#   review     the first review of a conversation revises the question a quarter of the time (solvable
#              false), otherwise repeats it with solvable true
#   sceptic    "none" flaws, the true answer
#   validate   Yes, unless the request falls under ``math_rubric_fail_rate`` (planted "math_rubric_no")
#   solve      the true answer, in a notation drawn per request (\frac{p}{q}, p/q, decimal, \dfrac): the
#              recipe must compare them by value; ``math_solve_disagree_rate`` of solves give a wrong number,
#              different from every other wrong one (planted "math_solve_disagree")
# Requests with a JSON schema get a JSON object; others get "Name: value" lines.

MATH_TASK = re.compile(r"^### Task: (.+)$", re.M)
MATH_STAGES = {
    "skill pair validation": "pair",
    "question writing": "question",
    "question review": "review",
    "sceptical attempt": "sceptic",
    "rubric validation": "validate",
    "independent solve": "solve",
}
_MATH_SKILL = re.compile(r"^Skill ([AB]): (\S+)$", re.M)
_DENOMINATORS = (1, 2, 4, 5, 8)


def math_stage(messages: list[dict[str, str]]) -> str | None:
    last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    found = MATH_TASK.search(last_user)
    return MATH_STAGES.get(found.group(1).strip()) if found else None


def math_pair(messages: list[dict[str, str]]) -> str | None:
    last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    names = [name for _, name in _MATH_SKILL.findall(last_user)]
    return "|".join(sorted(names)) if len(names) == 2 else None


def math_truth(question: str) -> tuple[int, int]:
    """(p, q) in lowest terms: the true answer p/q of a fake question."""
    h = hashlib.sha256(question.strip().encode()).digest()
    p, q = 1 + h[0] % 97, _DENOMINATORS[h[1] % len(_DENOMINATORS)]
    g = math.gcd(p, q)
    return p // g, q // g


def math_notation(p: int, q: int, pick: float) -> str:
    if q == 1:
        return str(p) if pick < 0.5 else f"{p}.0" if pick < 0.75 else f"\\frac{{{2 * p}}}{{2}}"
    forms = (f"\\frac{{{p}}}{{{q}}}", f"{p}/{q}", repr(p / q), f"\\dfrac{{{p}}}{{{q}}}")
    return forms[int(pick * len(forms))]


def _math_question_of(prompt: str) -> str:
    """The question line after "Question:" in a sceptic or solve prompt."""
    _, _, rest = prompt.partition("Question:\n")
    return rest.split("\n", 1)[0].strip()


def _math_new_question(messages: list[dict[str, str]], rng: random.Random) -> str:
    names = [name for _, name in _MATH_SKILL.findall(messages[1]["content"] if len(messages) > 1 else "")]
    about = " and ".join(n.replace("_", " ") for n in names) or "two skills"
    return f"Using {about}: {_sentences(rng, rng.randint(28, 36))} Find the exact value."


def answer_math(
    request: dict[str, Any], messages: list[dict[str, str]], digest: bytes, config: FakeConfig
) -> tuple[str, str] | None:
    """(answer, planted fault) for a math stage request, or None if the request is not one."""
    stage = math_stage(messages)
    if stage is None:
        return None
    rng = random.Random(int.from_bytes(digest[16:24]))
    last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    key, fault = digest.hex(), ""
    body: dict[str, Any]
    if stage == "pair":
        invalid = _stable(math_pair(messages) or "", "math_pair") < config.math_invalid_pair_rate
        reasoning = "The skills overlap too much to need both." if invalid else "Distinct skills that combine well."
        body, fault = {"reasoning": reasoning, "valid": not invalid}, "math_invalid_pair" if invalid else ""
    elif stage in ("question", "review"):
        previous = [m["content"] for m in messages if m["role"] == "assistant"]
        old = _math_fields(previous[-1]) if previous else {}
        first_review = stage == "review" and len(previous) == 1
        revise = stage == "question" or not old.get("question") or (first_review and _stable(key, "revise") < 0.25)
        question = _math_new_question(messages, rng) if revise else str(old["question"])
        p, q = math_truth(question)
        own = (p + q, q) if _stable(question, "math_wrong") < config.math_wrong_answer_rate else (p, q)
        fault = "math_wrong_answer" if own != (p, q) else ""
        stated = math_notation(*own, 0.0)
        solution = f"{_sentences(rng, 24)} Hence the value is {stated}."
        body = {"question": question, "solution": solution, "answer": stated}
        if stage == "review":
            solvable = not revise
            critique = "Clear, solvable and needs both skills." if solvable else "Ambiguous wording; revised."
            body = {"critique": critique, "solvable": solvable, **body}
    elif stage == "sceptic":
        p, q = math_truth(_math_question_of(last_user))
        body = {"flaws": "none", "attempt": _sentences(rng, 20), "answer": math_notation(p, q, 0.0)}
    elif stage == "validate":
        no = _stable(key, "math_rubric") < config.math_rubric_fail_rate
        reasoning = "Point 3 fails: one skill is not needed." if no else "Every rubric point holds."
        body, fault = {"reasoning": reasoning, "verdict": "No" if no else "Yes"}, "math_rubric_no" if no else ""
    else:
        p, q = math_truth(_math_question_of(last_user))
        if _stable(key, "math_disagree") < config.math_solve_disagree_rate:
            p, fault = p + q * (1 + int(_stable(key, "math_wrong_by") * 10**6)), "math_solve_disagree"
        body = {"solution": _sentences(rng, 20), "answer": math_notation(p, q, _stable(key, "math_notation"))}
    response_format = request.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        return orjson.dumps(body).decode(), fault
    names = {"valid": "verdict"}  # the pair prompt's text format asks for "Verdict: Yes/No"
    lines = [f"{names.get(name, name).capitalize()}: {'Yes' if value is True else 'No' if value is False else value}"
             for name, value in body.items()]  # fmt: skip
    return "\n".join(lines), fault


def _math_fields(content: str) -> dict[str, Any]:
    try:
        data = orjson.loads(content)
        return data if isinstance(data, dict) else {}
    except orjson.JSONDecodeError:
        found = re.findall(r"^(\w+): (.*)$", content, re.M)
        return {k.lower(): v for k, v in found}


# --- eval ---------------------------------------------------------------------------------------
# The eval-math recipe's prompts start with "### Task: eval solve" / "### Task: eval judge". A problem's true
# answer is ``math_truth(problem)`` (written \frac{p}{q}, or p when q = 1: ``eval_reference``). Per problem
# (by its hash, whatever the request): ``eval_wrong_rate`` answer (p+q)/q (planted "eval_wrong");
# ``eval_bad_steps_rate`` of the others give the right answer after a step marked EVAL_BAD_STEP (planted
# "eval_bad_steps"); ``eval_notation_rate`` of the rest write the right answer in another notation (decimal,
# p/q, \dfrac, 2p/2q; planted "eval_notation"). A fifth of the answers end "The final answer is X." without
# \boxed{}. The judge says the steps are invalid exactly when the solution has EVAL_BAD_STEP.

EVAL_TASK = re.compile(r"^### Task: eval (solve|judge)$", re.M)
EVAL_BAD_STEP = "Dividing both sides by zero, we get"
EVAL_BAD_REASON = "a step divides by zero, so the answer is not supported"


def eval_reference(problem: str) -> str:
    p, q = math_truth(problem)
    return str(p) if q == 1 else f"\\frac{{{p}}}{{{q}}}"


def eval_plan(problem: str, config: FakeConfig) -> str:
    """What the fake does with an eval question: "wrong", "bad_steps", "notation" or "plain"."""
    key = problem.strip()
    if _stable(key, "eval_wrong") < config.eval_wrong_rate:
        return "wrong"
    if _stable(key, "eval_bad_steps") < config.eval_bad_steps_rate:
        return "bad_steps"
    if _stable(key, "eval_notation") < config.eval_notation_rate:
        return "notation"
    return "plain"


def answer_eval(messages: list[dict[str, str]], config: FakeConfig) -> tuple[str, str] | None:
    last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    found = EVAL_TASK.search(last_user)
    if found is None:
        return None
    if found.group(1) == "judge":
        solution = last_user.partition("<solution>")[2].partition("</solution>")[0]
        bad = EVAL_BAD_STEP in solution
        reason = EVAL_BAD_REASON if bad else "every step is valid and leads to the answer"
        return orjson.dumps({"steps_valid": not bad, "reason": reason}).decode(), ""
    problem = last_user.partition("Problem:\n")[2].strip()
    plan = eval_plan(problem, config)
    p, q = math_truth(problem)
    rng = random.Random(problem)
    steps = _sentences(rng, 20)
    if plan == "wrong":
        p = p + q
    if plan == "notation":
        pick = _stable(problem, "eval_which_notation")
        stated = f"{2 * p}/{2 * q}" if q == 1 else math_notation(p, q, 0.25 + 0.75 * pick)
    else:
        stated = str(p) if q == 1 else f"\\frac{{{p}}}{{{q}}}"
    if plan == "bad_steps":
        steps += f" {EVAL_BAD_STEP} the value directly."
    if _stable(problem, "eval_unboxed") < 0.2:
        return f"{steps}\n\nThe final answer is {stated}.", f"eval_{plan}" if plan != "plain" else ""
    return f"{steps}\n\nTherefore the answer is $\\boxed{{{stated}}}$.", f"eval_{plan}" if plan != "plain" else ""


# --- math review help ---------------------------------------------------------------------------
# The review queue's help templates (workers/math/templates/v1/help_*.txt) start with "### Task: review
# help: <kind>" ("resolve" reuses the solve stage above, so the fake re-solves the current question):
#   make skill necessary   a revised question ("Revised so that <skill> is necessary: <old question>") with a
#                          brief solution and its true answer
#   check edit             Yes when the stated final answer is the question's true answer (math_truth), else No
# The answer comes as JSON with a schema, else as "Name: value" lines, like the stages.

REVIEW_HELP_TASK = re.compile(r"^### Task: review help: (.+)$", re.M)


def _section(prompt: str, title: str) -> str:
    _, _, rest = prompt.partition(f"{title}:\n")
    return rest.split("\n\n", 1)[0].strip()


def answer_review_help(
    request: dict[str, Any], messages: list[dict[str, str]], digest: bytes
) -> tuple[str, str] | None:
    last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    found = REVIEW_HELP_TASK.search(last_user)
    if found is None:
        return None
    rng = random.Random(int.from_bytes(digest[16:24]))
    kind = found.group(1).strip()
    body: dict[str, Any]
    if kind == "make skill necessary":
        skill = re.search(r'skill "([^"]+)" is not truly necessary', last_user)
        old = _section(last_user, "Current question")
        question = f"Revised so that {skill.group(1) if skill else 'skill B'} is necessary: {old}"
        p, q = math_truth(question)
        stated = math_notation(p, q, 0.0)
        body = {"question": question, "solution": f"{_sentences(rng, 16)} Hence {stated}.", "answer": stated}
    elif kind == "check edit":
        p, q = math_truth(_section(last_user, "Question"))
        final = re.search(r"^Final answer: (.*)$", last_user, re.M)
        ok = final is not None and final.group(1).strip() == math_notation(p, q, 0.0)
        reasoning = "The answer follows from the solution." if ok else "The final answer is not the question's."
        body = {"reasoning": reasoning, "verdict": "Yes" if ok else "No"}
    else:
        return None
    response_format = request.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        return orjson.dumps(body).decode(), ""
    return "\n".join(f"{name.capitalize()}: {value}" for name, value in body.items()), ""


# --- skill extraction ---------------------------------------------------------------------------
# Requests whose JSON schema is named ``extract_<task>`` (workers/extract) get answers computed from the
# one-line JSON after the prompt's <input> tag, so tests can predict every label, merge and mapping:
#   label        the first snake_case token (with an underscore) in a row's text, else its first 3 words
#   merge        labels lose their last _segment, round after round, until the groups fit max_skills
#   map          the listed skill that is the longest prefix of the row's label, else a stable pick;
#                ``extract_offlist_rate`` of the rows get a name that is not on the list
#   topics, skills, query_types   numbered names plus a near-duplicate (skills also repeat the topic)
# ``extract_garbage_rate`` of extraction answers are prose, not JSON. Both rates are drawn from the
# request's hash, so a retry with another seed gets a fresh draw.

EXTRACT_SCHEMA_PREFIX = "extract_"
EXTRACT_GARBAGE = "These rows cover several interesting skills; it is hard to say which."
_SNAKE_TOKEN = re.compile(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b")
_ALNUM = re.compile(r"[a-z0-9]+")


def extraction_label(text: str) -> str:
    found = _SNAKE_TOKEN.search(text)
    if found:
        return found.group(0)
    return "_".join(_ALNUM.findall(text.lower())[:3]) or "empty_text"


def merge_labels(labels: list[str], cap: int) -> dict[str, list[str]]:
    """Group names -> members: strip one trailing segment per pass while there are more than ``cap``."""
    groups: dict[str, list[str]] = {label: [label] for label in labels}
    while len(groups) > cap:
        parents: dict[str, list[str]] = {}
        for name, members in groups.items():
            parents.setdefault(name.rsplit("_", 1)[0], []).extend(members)
        if parents.keys() == groups.keys():
            break
        groups = parents
    if len(groups) > cap:  # nothing left to strip: fold the surplus into the first groups
        names = sorted(groups)
        kept = {n: groups[n] for n in names[:cap]}
        for i, name in enumerate(names[cap:]):
            kept[names[i % cap]].extend(groups[name])
        groups = kept
    return groups


def _stable(*parts: object) -> float:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8]) / 2**64


def pick_skill(label: str, skills: list[str]) -> str:
    prefixes = [s for s in skills if label == s or label.startswith(s + "_")]
    if prefixes:
        return max(prefixes, key=len)
    pool = sorted(s for s in skills if s.split("_")[0] == label.split("_")[0]) or sorted(skills)
    return pool[int(_stable(label) * len(pool))]


def _extraction_payload(last_user: str) -> Any:
    lines = last_user.splitlines()
    start = lines.index("<input>") if "<input>" in lines else -1
    return orjson.loads(lines[start + 1]) if 0 <= start < len(lines) - 1 else {}


def answer_extraction(request: dict[str, Any], last_user: str, digest: bytes, config: FakeConfig) -> str | None:
    """The answer to an extraction request, or None if the request is not one."""
    response_format = request.get("response_format")
    if not isinstance(response_format, dict):
        return None
    name = str((response_format.get("json_schema") or {}).get("name") or "")
    if not name.startswith(EXTRACT_SCHEMA_PREFIX):
        return None
    task, data = name.removeprefix(EXTRACT_SCHEMA_PREFIX), _extraction_payload(last_user)
    if _stable(digest.hex(), "garbage") < config.extract_garbage_rate:
        return EXTRACT_GARBAGE
    body: dict[str, Any]
    if task == "label":
        body = {"labels": [{"id": r["id"], "skill": extraction_label(r["text"])} for r in data["rows"]]}
    elif task == "merge":
        groups = merge_labels([item["label"] for item in data["labels"]], int(data["max_skills"]))
        body = {
            "skills": [
                {"name": group, "description": f"Rows about {group.replace('_', ' ')}.", "members": members}
                for group, members in groups.items()
            ]
        }
    elif task == "map":
        skills = [s["name"] for s in data["skills"]]
        labels = []
        for row in data["rows"]:
            choice = pick_skill(row["label"], skills)
            if _stable(digest.hex(), row["id"], "offlist") < config.extract_offlist_rate:
                choice += "_variant"
            labels.append({"id": row["id"], "skill": choice})
        body = {"labels": labels}
    elif task == "topics":
        base = " ".join(_ALNUM.findall(str(data.get("domain", "")).lower())[:2]).title() or "General"
        first = len(data.get("exclude", [])) + 1
        topics = [f"{base} Area {i}" for i in range(first, first + int(data["count"]))]
        body = {"topics": [*topics, topics[0].upper() + "!"]}
    elif task == "skills":
        topic = str(data["topic"])
        own = [{"name": f"{topic} Skill {j}", "description": f"Skill {j} of {topic}."} for j in range(data["count"])]
        shared = {"name": "Clear Writing", "description": "Write clearly."}
        body = {"skills": [{"name": topic, "description": "The topic itself."}, shared, *own]}
    elif task == "query_types":
        kinds = [
            {"name": f"Query Type {i}", "definition": f"Requests of kind {i}.", "examples": [f"Example {i}a"]}
            for i in range(1, int(data["count"]) + 1)
        ]
        body = {"query_types": [*kinds, {**kinds[0], "name": "query type 1"}]}
    else:
        return None
    return orjson.dumps(body).decode()


# --- server state -------------------------------------------------------------------------------


class FakeState:
    """Counters, the token bucket and fault RNG of one running fake."""

    def __init__(self, config: FakeConfig, guard: Guard | None = None) -> None:
        self.config = config
        self.batches = BatchStore(lambda: self.config, self.refuse_line, self.answer_line, guard)
        self.reset()

    def reset(self) -> None:
        now = time.monotonic()
        self.counts: dict[str, int] = dict.fromkeys(
            ("requests", "ok", "rate_limited", "errors", "malformed", "hung", "unauthorized",
             "bad_requests", "not_found", "prompt_tokens", "completion_tokens", "truncated", "repaid"), 0
        )  # fmt: skip
        # sha256 of every request body answered 200 so far: a request arriving with one is "repaid" (the
        # client paid for an answer it had already been given)
        self.answered: set[bytes] = set()
        self.planted: dict[str, int] = {}
        self.tokens = self.capacity()
        self.refilled_at = now
        self.window: deque[float] = deque()
        self.max_rps_1s = 0
        self.per_second: dict[int, int] = {}
        self.in_flight = self.max_in_flight = 0
        self.slots = asyncio.Semaphore(self.config.capacity) if self.config.capacity else None  # see capacity
        self.fault_rng = random.Random(self.config.fault_seed)
        self.storm_until = now + self.config.storm_s if self.config.storm_s else 0.0
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_REQUESTS)  # valid request bodies, newest last
        self.math_stages: dict[str, int] = {}  # math requests by stage
        self.math_pair_checks: dict[str, int] = {}  # math pair validations by pair "a|b"
        self.batches.reset()

    def note(self, done: "Completion") -> None:
        """Count what an answer carries (planted fault, math stage), online or in a batch alike."""
        if done.fault:
            self.planted[done.fault] = self.planted.get(done.fault, 0) + 1
        if done.math_stage is not None:
            self.math_stages[done.math_stage] = self.math_stages.get(done.math_stage, 0) + 1
        if done.math_pair is not None:
            self.math_pair_checks[done.math_pair] = self.math_pair_checks.get(done.math_pair, 0) + 1

    def refuse_line(self, body: Any) -> LineAnswer | None:
        """The 4xx /v1/chat/completions gives ``body`` (bad shape, unknown model, too long), if any."""
        try:
            messages, max_tokens = parse_chat(body)
        except ValueError as exc:
            return LineAnswer(400, openai_error(400, "invalid_request_error", str(exc)))
        refused = refusal(body, messages, max_tokens, self.config)
        return None if refused is None else LineAnswer(refused[0], openai_error(*refused))

    def answer_line(self, body: Any) -> LineAnswer:
        """A batch line's answer: what /v1/chat/completions answers ``body``, without transport faults."""
        if (refused := self.refuse_line(body)) is not None:
            return refused
        messages, max_tokens = parse_chat(body)
        done = complete(body, messages, max_tokens, self.config)
        self.note(done)
        return LineAnswer(200, done.body, done.prompt_tokens, done.completion_tokens)

    def capacity(self) -> float:
        return max(1.0, self.config.rpm / 60 * self.config.burst_s)

    def take(self, now: float) -> float:
        """0 if the bucket had a token (taken), else seconds until one is there."""
        rate = self.config.rpm / 60
        self.tokens = min(self.capacity(), self.tokens + (now - self.refilled_at) * rate)
        self.refilled_at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / rate

    def admit(self, now: float) -> None:
        """Record a request that passed the rate limit (it may still fail by injected fault)."""
        self.window.append(now)
        while self.window[0] <= now - 1.0:
            self.window.popleft()
        self.max_rps_1s = max(self.max_rps_1s, len(self.window))
        second = int(now)
        self.per_second[second] = self.per_second.get(second, 0) + 1
        if len(self.per_second) > RECENT_S:
            del self.per_second[min(self.per_second)]

    def ratelimit_headers(self) -> dict[str, str]:
        """What OpenAI sends: the limit, what is left of the bucket, and when it is full again."""
        rate = self.config.rpm / 60
        return {
            "x-ratelimit-limit-requests": str(self.config.rpm),
            "x-ratelimit-remaining-requests": str(int(self.tokens)),
            "x-ratelimit-reset-requests": f"{(self.capacity() - self.tokens) / rate:.3f}s",
        }

    def snapshot(self) -> dict[str, Any]:
        now = int(time.monotonic())
        return {
            **self.counts,
            "max_rps_1s": self.max_rps_1s,
            "recent_rps": [self.per_second.get(s, 0) for s in range(now - RECENT_S + 1, now + 1)],
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "planted": dict(self.planted),
            "math_stages": dict(self.math_stages),
            "math_pair_checks": dict(self.math_pair_checks),
            **self.batches.stats(),
        }

    def update(self, patch: dict[str, Any]) -> None:
        self.config = FakeConfig.model_validate({**self.config.model_dump(), **patch})
        now = time.monotonic()
        if {"rpm", "burst_s"} & patch.keys():
            self.tokens, self.refilled_at = self.capacity(), now
        if "storm_s" in patch:
            self.storm_until = now + self.config.storm_s
        if "fault_seed" in patch:
            self.fault_rng = random.Random(self.config.fault_seed)
        if "capacity" in patch:  # requests queued on the old semaphore finish there
            self.slots = asyncio.Semaphore(self.config.capacity) if self.config.capacity else None


# --- HTTP ---------------------------------------------------------------------------------------


_json = json_response


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return _json(openai_error(status, code, message), status, headers)


def _rate_limited(state: FakeState, seconds: float) -> Response:
    state.counts["rate_limited"] += 1
    headers = {
        "retry-after": str(max(1, math.ceil(seconds))),
        "retry-after-ms": str(math.ceil(seconds * 1000)),
    }
    return _error(429, "rate_limit_exceeded", "Rate limit reached for requests.", headers)


def _messages(request: Any) -> list[dict[str, str]]:
    messages = request.get("messages") if isinstance(request, dict) else None
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    for m in messages:
        if not (isinstance(m, dict) and isinstance(m.get("content"), str) and isinstance(m.get("role"), str)):
            raise ValueError("each message needs string 'role' and 'content'")
    return messages


def parse_chat(body: Any) -> tuple[list[dict[str, str]], int]:
    """(messages, max_tokens) of a chat request body; ValueError says what is wrong (a 400)."""
    messages = _messages(body)
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens", 4096))
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError("'max_tokens' must be a positive integer")
    return messages, max_tokens


def refusal(body: Any, messages: list[dict[str, str]], max_tokens: int, cfg: FakeConfig) -> tuple[int, str, str] | None:
    """(status, code, message) when a well-formed request is still refused: unknown model, context too long."""
    model = body.get("model") or DEFAULT_MODEL
    if cfg.model_strict and model != cfg.model_strict:
        return 404, "model_not_found", f"The model '{model}' does not exist."
    if cfg.max_context_words and sum(word_count(m["content"]) for m in messages) + max_tokens > cfg.max_context_words:
        return 400, "context_length_exceeded", "This model's maximum context length is exceeded."
    return None


@dataclass
class Completion:
    """A 200 answer (``body`` is the chat.completion) and what it carries, for the counters."""

    body: dict[str, Any]
    prompt_tokens: int
    completion_tokens: int
    fault: str
    truncated: bool
    math_stage: str | None
    math_pair: str | None


def complete(body: Any, messages: list[dict[str, str]], max_tokens: int, cfg: FakeConfig) -> Completion:
    """The chat.completion for a valid request: the same for the online route and a batch line."""
    content, fault = answer(body, messages, cfg)
    stage = math_stage(messages)
    finish = "length" if fault == "cutoff" else "stop"
    truncated = word_count(content) > max_tokens
    if truncated:
        content, finish = truncate_words(content, max_tokens), "length"
    prompt_tokens, completion_tokens = sum(word_count(m["content"]) for m in messages), word_count(content)
    completion = {
        "id": "chatcmpl-" + hashlib.sha256(content.encode()).hexdigest()[:24],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or DEFAULT_MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    pair = math_pair(messages) if stage == "pair" else None
    return Completion(completion, prompt_tokens, completion_tokens, fault, truncated, stage, pair)


def create_app(config: FakeConfig | None = None) -> Starlette:
    """The ASGI app; usable in-process too (e.g. with ``httpx.ASGITransport``)."""

    def guard(request: Request) -> Response | None:
        """401 unless the request carries ``require_key`` (when set)."""
        key = state.config.require_key
        if key and request.headers.get("authorization") != f"Bearer {key}":
            state.counts["unauthorized"] += 1
            return _error(401, "invalid_api_key", "Incorrect API key provided.")
        return None

    state = FakeState(config or FakeConfig(), guard)

    async def chat(request: Request) -> Response:
        state.counts["requests"] += 1
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            if state.slots is None:
                return await _chat(request)
            async with state.slots:  # served `capacity` at a time, the rest queue (vLLM's waiting requests)
                return await _chat(request)
        except ClientDisconnect:  # the client gave up (e.g. its timeout); nobody reads an answer
            return Response(status_code=499)
        finally:
            state.in_flight -= 1

    async def _chat(request: Request) -> Response:
        cfg, counts = state.config, state.counts
        if (refused := guard(request)) is not None:
            return refused
        try:
            body = orjson.loads(await request.body())
            messages, max_tokens = parse_chat(body)
        except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
            counts["bad_requests"] += 1
            return _error(400, "invalid_request_error", str(exc))
        state.recent.append(body)
        request_key = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).digest()
        if request_key in state.answered:
            counts["repaid"] += 1
        if (refused_by := refusal(body, messages, max_tokens, cfg)) is not None:
            counts["not_found" if refused_by[0] == 404 else "bad_requests"] += 1
            return _error(*refused_by)

        now = time.monotonic()
        if cfg.storm > 0:
            cfg.storm -= 1
            return _rate_limited(state, cfg.storm_retry_after_s)
        if state.storm_until > now:
            return _rate_limited(state, state.storm_until - now)
        if cfg.rpm and (wait := state.take(now)):
            return _rate_limited(state, wait)
        state.admit(now)

        rng = state.fault_rng
        hang, error, malformed = rng.random() < cfg.hang_rate, rng.random() < cfg.error_rate, rng.random()
        if cfg.hang_next > 0 or hang:
            cfg.hang_next = max(0, cfg.hang_next - 1)
            counts["hung"] += 1
            await asyncio.sleep(cfg.hang_s)
        delay = cfg.latency_ms + (rng.random() * cfg.latency_jitter_ms if cfg.latency_jitter_ms else 0.0)
        if delay:
            await asyncio.sleep(delay / 1000)
        if cfg.fail_next > 0 or error:
            status = cfg.fail_status if cfg.fail_next > 0 else rng.choice((500, 503))
            cfg.fail_next = max(0, cfg.fail_next - 1)
            counts["errors"] += 1
            return _error(status, "server_error", "The server had an error processing your request.")
        if cfg.malformed_next > 0 or malformed < cfg.malformed_rate:
            cfg.malformed_next = max(0, cfg.malformed_next - 1)
            counts["malformed"] += 1
            broken = b'{"id": "chatcmpl-broken", "choices": [' if counts["malformed"] % 2 else b'{"object": "x"}'
            return Response(broken, 200, media_type="application/json")

        done = complete(body, messages, max_tokens, cfg)
        state.note(done)
        counts["truncated"] += done.truncated
        counts["ok"] += 1
        state.answered.add(request_key)
        counts["prompt_tokens"] += done.prompt_tokens
        counts["completion_tokens"] += done.completion_tokens
        headers = state.ratelimit_headers() if cfg.ratelimit_headers and cfg.rpm else None
        return _json(done.body, headers=headers)

    async def models(_: Request) -> Response:
        name = state.config.model_strict or DEFAULT_MODEL
        return _json({"object": "list", "data": [{"id": name, "object": "model", "owned_by": "fake"}]})

    async def health(_: Request) -> Response:
        return _json({"status": "ok"})

    async def stats(_: Request) -> Response:
        await state.batches.advance_all()  # batches whose time has come answer (and bill) their lines first
        return _json(state.snapshot())

    async def get_config(_: Request) -> Response:
        return _json(state.config.model_dump())

    async def set_config(request: Request) -> Response:
        try:
            patch = orjson.loads(await request.body())
            if not isinstance(patch, dict):
                raise ValueError("expected a JSON object")
            state.update(patch)
        except ValidationError as exc:
            return _json({"detail": exc.errors(include_url=False, include_context=False)}, 422)
        except ValueError as exc:
            return _json({"detail": str(exc)}, 422)
        return _json(state.config.model_dump())

    async def recent_requests(_: Request) -> Response:
        return _json({"requests": list(state.recent)})

    async def reset(_: Request) -> Response:
        state.reset()
        return _json(state.snapshot())

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", models),
            *state.batches.routes(),
            Route("/health", health),
            Route("/admin/stats", stats),
            Route("/admin/requests", recent_requests),
            Route("/admin/config", get_config, methods=["GET"]),
            Route("/admin/config", set_config, methods=["POST"]),
            Route("/admin/reset", reset, methods=["POST"]),
        ]
    )
    app.state.fake = state
    return app


# --- CLI ----------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.fake_llm", description=DESCRIPTION)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = pick a free port")
    for name, field in FakeConfig.model_fields.items():
        kind: Any = field.annotation if field.annotation in (int, float) else str
        if name in ("batch_fail_lines", "judge_script"):  # the mappings: JSON, e.g. '{"req-1": "server_error"}'
            kind = orjson.loads
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, help=field.description)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = vars(_parser().parse_args(argv))
    config = FakeConfig.model_validate(
        {k: v for k, v in args.items() if k in FakeConfig.model_fields and v is not None}
    )
    family = socket.AF_INET6 if ":" in args["host"] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args["host"], args["port"]))
    sock.listen(2048)  # connections queue here until uvicorn starts accepting
    host, port = sock.getsockname()[:2]
    print(f"http://{f'[{host}]' if family == socket.AF_INET6 else host}:{port}/v1", flush=True)
    server_config = uvicorn.Config(
        create_app(config),
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1,
        timeout_keep_alive=KEEP_ALIVE_S,
        backlog=2048,
    )
    uvicorn.Server(server_config).run(sockets=[sock])


if __name__ == "__main__":
    main()
