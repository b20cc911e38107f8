"""Export formats that SFT trainers read; each turns one stored example into one output record."""

from collections.abc import AsyncIterator, Callable
from enum import StrEnum
from typing import Any

import orjson

from schemas.examples import Example


class ExportFormat(StrEnum):
    ALPACA = "alpaca"
    SHAREGPT = "sharegpt"
    JSONL = "jsonl"


def alpaca(example: Example) -> dict[str, Any]:
    return {"instruction": example.instruction, "input": example.input, "output": example.output}


def sharegpt(example: Example) -> dict[str, Any]:
    human = example.instruction + (f"\n\n{example.input}" if example.input else "")
    return {
        "id": example.id,
        "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": example.output}],
    }


def full(example: Example) -> dict[str, Any]:
    return example.model_dump(mode="json")


CONVERTERS: dict[ExportFormat, Callable[[Example], dict[str, Any]]] = {
    ExportFormat.ALPACA: alpaca,
    ExportFormat.SHAREGPT: sharegpt,
    ExportFormat.JSONL: full,
}


async def render(examples: AsyncIterator[Example], fmt: ExportFormat) -> AsyncIterator[bytes]:
    """alpaca and sharegpt are JSON arrays (what their trainers load); jsonl is one full record per line."""
    convert = CONVERTERS[fmt]
    if fmt is ExportFormat.JSONL:
        async for example in examples:
            yield orjson.dumps(convert(example)) + b"\n"
        return
    first = True
    yield b"["
    async for example in examples:
        yield (b"\n" if first else b",\n") + orjson.dumps(convert(example))
        first = False
    yield b"\n]\n"
