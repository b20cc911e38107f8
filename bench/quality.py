"""Quality-stage benchmark: planted shirkers mixed into real Instruct-SkillMix examples.

Reads the 1,000 real examples from ``--data`` (never copied into the repository), plants shirkers about 1 in
5 as in the paper (papers.md §A), runs one ``QualityFilter`` (one job) over the shuffled mix on one core and
prints the catch rate per kind, the false-reject rate on the real examples with its top reasons, and
records/s. No Redis, no LLM.

Planted kinds: hand-written in ``bench/shirkers/shirkers.jsonl`` (junk: lazy, generic, padded; one_paragraph:
a substantial instruction answered in one paragraph; refusal; placeholder; restatement: the instruction
paraphrased back), and built at run time from the real data (off_topic: a real answer to another real
instruction; cut_off: a real answer stopped mid-sentence, on a list marker or in a code fence, with
finish_reason ``stop``; reask: a real instruction re-asked "in one paragraph").

    python bench/quality.py [--data PATH] [--seed 0] [--repeat 3] [--show-misses] [--show-false-rejects]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from schemas.curation import QualitySettings
from schemas.examples import GeneratedItem
from workers.curate import semantic
from workers.curate.quality import QualityFilter
from workers.curate.quality.checks import Embed

DATA = Path("/work/shared/data/ism_sda_k2_1000.json")
SHIRKERS = Path(__file__).resolve().parent / "shirkers" / "shirkers.jsonl"
GLANCE = Path(__file__).resolve().parent / "shirkers" / "glance.jsonl"  # whole pairs, skills given
KINDS = ["junk", "one_paragraph", "refusal", "placeholder", "restatement", "reask", "off_topic", "cut_off"]
KINDS += ["glance_placeholder", "not_a_request", "no_skill"]
TARGETS = {"junk": 0.9, "one_paragraph": 0.9}
MAX_FALSE_REJECTS = 0.03
MIN_RECORDS_PER_S = 2000


def skills_of(record: dict[str, Any]) -> list[str]:
    return [s.strip() for s in record.get("skills_joined_str", "").split(",") if s.strip()]


def topic_of(record: dict[str, Any]) -> str:
    """The item's skills as a phrase ("patina application and historical linguistics research"): lazy
    answers name the topic they dodge."""
    return " and ".join(s.replace("_", " ") for s in skills_of(record)) or "this"


def item(kind: str, n: int, instruction: str, output: str, skills: list[str], **extra: Any) -> GeneratedItem:
    return GeneratedItem(
        job_id="bench-quality",
        index=n,
        instruction=instruction,
        output=output,
        skills=skills,
        finish_reason=extra.pop("finish_reason", "stop"),
        recipe=kind,  # the bench's label, read back when scoring
        **extra,
    )


def cut(text: str, rng: random.Random) -> str:
    """A real answer stopped mid-sentence, on a bare list marker, or inside a code fence."""
    style = rng.random()
    markers = [m.end() for m in re.finditer(r"\n\s*(?:[-*]|\d+\.)\s", text)]
    if style < 0.2 and markers:
        return text[: rng.choice(markers)]
    words = list(re.finditer(r"\S+", text))
    lo, hi = len(words) // 3, max(len(words) // 3 + 1, len(words) * 9 // 10)
    for _ in range(20):
        w = words[rng.randrange(lo, hi)]
        if not re.search(r"[.!?:)\]\"'*]$", w.group(0)):  # a cut at a sentence end is not a cut
            return text[: w.end()]
    return text[: words[lo].end()] + " and the"


def build(
    data: list[dict[str, Any]], shirkers: list[dict[str, Any]], seed: int, glance: list[dict[str, Any]] = ()
) -> list[GeneratedItem]:
    rng = random.Random(seed)
    items = [
        item("real", i, r["instruction"], r["output"], skills_of(r), input=r.get("input", ""))
        for i, r in enumerate(data)
    ]
    n = len(items)

    def host() -> dict[str, Any]:
        return data[rng.randrange(len(data))]

    for s in shirkers:
        record = host()
        instruction = s.get("instruction") or record["instruction"]
        skills = [] if s.get("instruction") else skills_of(record)
        items.append(item(s["kind"], n, instruction, s["output"].replace("{topic}", topic_of(record)), skills))
        n += 1
    for _ in range(20):  # a fine answer to a different question
        a, b = rng.sample(range(len(data)), 2)
        items.append(item("off_topic", n, data[a]["instruction"], data[b]["output"], skills_of(data[a])))
        n += 1
    for _ in range(30):
        record = host()
        items.append(item("cut_off", n, record["instruction"], cut(record["output"], rng), skills_of(record)))
        n += 1
    for suffix in ["Answer in one paragraph.", "Please answer in a single paragraph.", "(Answer in one paragraph)"]:
        for _ in range(4):
            record = host()
            out = f"{record['instruction']} {suffix}" if rng.random() < 0.5 else f"{suffix} {record['instruction']}"
            items.append(item("reask", n, record["instruction"], out, skills_of(record)))
            n += 1
    other = random.Random(seed + 1)  # the glance pairs draw their own hosts: the kinds above are unchanged
    for g in glance:  # junk seen at a glance, as the bundled model wrote it: the whole pair is given
        skills = g.get("skills") or skills_of(data[other.randrange(len(data))])
        items.append(item(g["kind"], n, g["instruction"], g["output"], skills))
        n += 1
    rng.shuffle(items)
    return items


def run(items: list[GeneratedItem], settings: QualitySettings, embed: Embed | None) -> tuple[list[Any], float]:
    quality = QualityFilter(settings, embed=embed)
    start = time.process_time()
    verdicts = [quality.verdict(it) for it in items]
    return verdicts, time.process_time() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--shirkers", type=Path, default=SHIRKERS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="timed passes (best is reported)")
    parser.add_argument("--settings", default="{}", help="QualitySettings as JSON")
    parser.add_argument("--no-embed", action="store_true", help="no_skill_shown by words only (no [embed] model)")
    parser.add_argument("--show-misses", action="store_true")
    parser.add_argument("--show-false-rejects", action="store_true")
    args = parser.parse_args(argv)

    data = json.loads(args.data.read_text())
    shirkers = [json.loads(line) for line in args.shirkers.read_text().splitlines() if line.strip()]
    glance = [json.loads(line) for line in GLANCE.read_text().splitlines() if line.strip()]
    settings = QualitySettings.model_validate_json(args.settings)
    items = build(data, shirkers, args.seed, glance)
    embed = None if args.no_embed else semantic.embedder()
    if embed is not None:
        embed(["load the model before the timed passes"])
    timings = []
    for _ in range(max(1, args.repeat)):
        built = build(data, shirkers, args.seed, glance)  # fresh strings: text caches start cold every pass
        timings.append(run(built, settings, embed)[1])
    verdicts, _ = run(items, settings, embed)

    total: Counter[str] = Counter()
    caught: Counter[str] = Counter()
    reasons: dict[str, Counter[str]] = defaultdict(Counter)
    for it, v in zip(items, verdicts, strict=True):
        total[it.recipe] += 1
        if not v.accepted:
            caught[it.recipe] += 1
            reasons[it.recipe][v.reasons[0].value] += 1
        elif args.show_misses and it.recipe != "real":
            print(f"MISS {it.recipe}: {it.output[:160]!r}", file=sys.stderr)
        if args.show_false_rejects and it.recipe == "real" and not v.accepted:
            print(f"FALSE REJECT {v.detail}: ...{it.output[-100:]!r}", file=sys.stderr)

    seconds = min(timings)
    result: dict[str, Any] = {
        "real": total["real"],
        "planted": sum(total.values()) - total["real"],
        "false_reject_rate": round(caught["real"] / total["real"], 4),
        "false_reject_reasons": dict(reasons["real"].most_common(5)),
        "catch_rate": {k: round(caught[k] / total[k], 3) for k in KINDS if total[k]},
        "caught_by": {k: dict(reasons[k].most_common(3)) for k in KINDS if total[k]},
        "records_per_s": round(len(items) / seconds),
    }
    ok = (
        all(result["catch_rate"].get(k, 0) >= t for k, t in TARGETS.items())
        and result["false_reject_rate"] <= MAX_FALSE_REJECTS
        and result["records_per_s"] >= MIN_RECORDS_PER_S
    )
    result["targets_met"] = ok
    print(json.dumps(result))
    rates = result["catch_rate"]
    print("| " + " | ".join(["false rejects (real)", *KINDS, "records/s"]) + " |")
    print("|" + "---|" * (len(KINDS) + 2))
    cells = [f"{result['false_reject_rate']:.1%} ({caught['real']}/{total['real']})"]
    cells += [f"{rates[k]:.0%} ({caught[k]}/{total[k]})" if k in rates else "-" for k in KINDS]
    print("| " + " | ".join([*cells, f"{result['records_per_s']:,}"]) + " |")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
