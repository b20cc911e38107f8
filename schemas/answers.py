"""Final answers in free text: the last ``\\boxed{...}`` (nested braces included), else a closing "the answer
is ..." / "Answer: ..." line; and a question file's reference answer (``answer``, else the solution's last
``\\boxed{}``). Pure functions, used by the ``eval-math`` recipe and its CLI."""

import re
from typing import Any

_BOX = re.compile(r"\\(?:boxed|fbox)\s*")
_ANSWER_IS = re.compile(r"answer(?:\*\*|__)?\s*(?:is|:|=)\s*:?", re.I)


def boxed_all(text: str) -> list[str]:
    """Every ``\\boxed{...}`` / ``\\fbox{...}`` content in order, braces balanced (``\\boxed 5`` too)."""
    found: list[str] = []
    for mark in _BOX.finditer(text):
        i = mark.end()
        if i < len(text) and text[i] == "{":
            depth, j = 0, i
            while j < len(text):
                if text[j] == "{" and text[j - 1] != "\\":
                    depth += 1
                elif text[j] == "}" and text[j - 1] != "\\":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            if depth == 0:
                found.append(text[i + 1 : j].strip())
        else:  # "\boxed 5": the next token
            token = re.match(r"[^\s$]+", text[i:])
            if token:
                found.append(token.group(0))
    return found


def last_boxed(text: str) -> str | None:
    found = boxed_all(text)
    return found[-1] if found else None


def final_answer(response: str) -> str:
    """The model's final answer: its last ``\\boxed{}``, else the last "answer is X" line; "" when none."""
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed
    for line in reversed(response.splitlines()):
        marks = list(_ANSWER_IS.finditer(line))
        if marks:  # the text after the line's last "answer is" / "Answer:", without markup or a closing period
            answer = line[marks[-1].end() :].strip().strip("*_ ")
            if answer.startswith("$") and answer.count("$") >= 2:  # "$5$. I hope it is correct." -> "5"
                answer = answer[1 : answer.index("$", 1)]
            else:  # "3.5. Done" -> "3.5"
                answer = re.sub(r"\.(?:\s.*)?$", "", answer)
            answer = answer.strip().strip("$").strip()
            if answer:
                return answer
    return ""


def reference_answer(row: dict[str, Any]) -> str | None:
    """A question row's reference answer: ``answer`` when present, else the last ``\\boxed{}`` of ``solution``."""
    answer = row.get("answer")
    if isinstance(answer, str | int | float) and str(answer).strip():
        text = str(answer).strip()
        return last_boxed(text) or text.strip("$").strip()
    solution = row.get("solution")
    if isinstance(solution, str):
        return last_boxed(solution)
    return None
