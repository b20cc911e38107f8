import pytest

from workers.recipes.parse import PairNotFound, parse_pair


@pytest.mark.parametrize(
    "text",
    [
        "## Instruction\nHow do I x?\n\n## Response\nDo y.",
        "**Instruction:** How do I x?\n**Response:** Do y.\n\nSkills: a, b",
        "Task type: planning\nQuery type: help\nInstruction: How do I x?\nResponse: Do y.",
        '```json\n{"instruction": "How do I x?", "response": "Do y."}\n```',
        "Draft:\n## Instruction\nold\n## Response\nold\n\n"
        "Refined version:\n### Instruction:\nHow do I x?\n### Response:\nDo y.",
    ],
)
def test_parses_the_final_pair_in_many_dresses(text: str) -> None:
    assert parse_pair(text) == ("How do I x?", "Do y.")


def test_body_lines_that_start_with_a_header_word_stay_in_the_body() -> None:
    assert parse_pair("## Instruction\nQ?\n## Response\nFirst line.\nAnswer the phone.") == (
        "Q?",
        "First line.\nAnswer the phone.",
    )


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("Just some prose with no sections.", "Response"),
        ("## Response\nonly an answer", "Instruction"),
        ("## Instruction\nQ?\n## Response\n   ", "empty response"),
    ],
)
def test_unparseable_answers_say_what_is_missing(text: str, why: str) -> None:
    with pytest.raises(PairNotFound, match=why):
        parse_pair(text)
