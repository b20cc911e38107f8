"""Pull the final (instruction, response) pair out of a model's answer, whatever dress it wears."""

import re

from schemas.errors import AnswerUnusable
from workers.lenient import braced_object, strip_fences

_HEADER = r"^[ \t]*(?:#+[ \t]*)?(?:\*\*|__)?[ \t]*NAME[ \t]*(?:\*\*|__)?[ \t]*(?::|(?=\n)|$)[ \t]*(?:\*\*|__)?[ \t]*"
_INSTRUCTION = re.compile(_HEADER.replace("NAME", r"(?:instruction|question|user query)"), re.I | re.M)
_RESPONSE = re.compile(_HEADER.replace("NAME", r"(?:response|answer)"), re.I | re.M)
_TRAILER = re.compile(
    _HEADER.replace("NAME", r"(?:task type|skills?|query type|strengths|weaknesses|critique|notes?)"), re.I | re.M
)


class PairNotFound(AnswerUnusable, ValueError):
    pass


def _from_json(text: str) -> tuple[str, str] | None:
    data = braced_object(text)
    if data is None:
        return None
    lowered = {str(k).lower(): v for k, v in data.items()}
    instruction = lowered.get("instruction") or lowered.get("question")
    response = lowered.get("response") or lowered.get("answer") or lowered.get("output")
    if isinstance(instruction, str) and isinstance(response, str):
        return instruction.strip(), response.strip()
    return None


def parse_pair(text: str) -> tuple[str, str]:
    """Return (instruction, response); raise PairNotFound naming what was missing.

    The last instruction header followed by a response header wins, because refine turns often quote
    the earlier draft before the final version.
    """
    text = strip_fences(text)
    if text.lstrip().startswith("{"):
        pair = _from_json(text)
        if pair and all(pair):
            return pair
    responses = list(_RESPONSE.finditer(text))
    if not responses:
        pair = _from_json(text)
        if pair and all(pair):
            return pair
        raise PairNotFound("no 'Response' section")
    instructions = [m for m in _INSTRUCTION.finditer(text) if m.start() < responses[-1].start()]
    if not instructions:
        raise PairNotFound("no 'Instruction' section before the response")
    ins = instructions[-1]
    resp = next(m for m in responses if m.start() > ins.start())
    instruction = text[ins.end() : resp.start()]
    response = text[resp.end() :]
    trailer = _TRAILER.search(response)
    if trailer and trailer.start() > 0:
        response = response[: trailer.start()]
    instruction, response = instruction.strip(), response.strip()
    if not instruction:
        raise PairNotFound("empty instruction section")
    if not response:
        raise PairNotFound("empty response section")
    return instruction, response
