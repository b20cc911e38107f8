"""bench/judge_eval.py without an endpoint: the hand-written bad set, the labelled mix, the stratified split
and the threshold choice checked on a held-back half, with synthetic scores."""

import json
import math
import random
from pathlib import Path

import pytest

from bench.judge_eval import (
    DATA,
    FIELDS,
    KINDS,
    build_labelled,
    choose_threshold,
    example_score,
    held_back_check,
    load_bad,
    load_good,
    rates,
    split_halves,
)


def test_the_bad_set_has_six_of_every_kind_on_their_own_instructions() -> None:
    bad = load_bad()
    per_kind = {k: [r for r in bad if r["kind"] == k] for k in KINDS}
    assert all(len(rows) >= 6 for rows in per_kind.values()), {k: len(v) for k, v in per_kind.items()}
    assert len({r["output"] for r in bad}) == len(bad) and len(bad) >= 48
    assert all(set(r) == set(FIELDS) and r["label"] == "bad" and len(r["skills"]) == 2 for r in bad)
    if DATA.exists():  # none of them is a real example's instruction (the real data is not copied in)
        real = {r["instruction"] for r in json.loads(DATA.read_text())}
        assert not real & {r["instruction"] for r in bad}


@pytest.mark.skipif(not DATA.exists(), reason="the real Instruct-SkillMix data is not on this machine")
def test_good_examples_come_from_the_real_data_at_run_time() -> None:
    good = load_good(DATA, 40, seed=1)
    assert len(good) == 40 and all(r["label"] == "good" and r["kind"] == "real" and r["skills"] for r in good)
    assert load_good(DATA, 40, seed=1) == good != load_good(DATA, 40, seed=2)
    rows = build_labelled(load_bad(), good, seed=3)
    assert len(rows) == 40 + len(load_bad()) and all(tuple(r) == FIELDS for r in rows)


def _synthetic(n_good: int, per_kind: int) -> list[dict[str, str]]:
    rows = [{"label": "good", "kind": "real"} for _ in range(n_good)]
    rows += [{"label": "bad", "kind": k} for k in KINDS for _ in range(per_kind)]
    random.Random(0).shuffle(rows)
    return rows


def test_split_is_a_stratified_partition() -> None:
    rows = _synthetic(101, 5)
    first, second = split_halves(rows, seed=4)
    assert sorted(first + second) == list(range(len(rows))) and not set(first) & set(second)
    assert abs(len(first) - len(second)) <= 1
    for kind in [*KINDS, "real"]:
        a = sum(rows[i]["kind"] == kind for i in first)
        b = sum(rows[i]["kind"] == kind for i in second)
        assert abs(a - b) <= 1 and a and b, kind  # every kind on both sides
    assert split_halves(rows, seed=4) == (first, second) != split_halves(rows, seed=5)


def test_threshold_choice_is_exact_on_known_scores() -> None:
    # 100 good: 2 score 2, 3 score 3, the rest 5. 10 bad: 4 score 1, 3 score 2, 2 score 4, 1 scores 5.
    labels = ["good"] * 100 + ["bad"] * 10
    scores = [2.0] * 2 + [3.0] * 3 + [5.0] * 95 + [1.0] * 4 + [2.0] * 3 + [4.0] * 2 + [5.0]
    assert rates(labels, scores, 3) == rates(labels, scores, 3.0)
    r = rates(labels, scores, 3)
    assert (r.false_reject, r.catch, r.goods, r.bads) == (0.02, 0.7, 100, 10)
    chosen = choose_threshold(labels, scores, 0.03)  # 4 would reject 5 good (5%): 3 is the most allowed
    assert (chosen.threshold, chosen.false_reject, chosen.catch) == (3.0, 0.02, 0.7)
    chosen = choose_threshold(labels, scores, 0.05)
    assert (chosen.threshold, chosen.false_reject, chosen.catch) == (5.0, 0.05, 0.9)  # 4 catches only 0.7
    assert choose_threshold(labels, scores, 0.0).threshold == 2.0  # catches the four 1s, no good lost
    assert choose_threshold(labels, scores, 1.0).catch == 1.0
    assert choose_threshold(["good", "good", "bad"], [5.0, 5.0, 1.0], 1.0).threshold == 5.0  # tie with 6: the lower
    # an unreadable answer is rejected at every threshold, never a pass
    assert example_score({"error": True, "scores": {"a": 5}}) == -math.inf
    assert example_score({"scores": {"a": 5, "b": 2}}) == 2.0 and example_score({"score": 4}) == 4.0
    assert rates(["bad"], [-math.inf], 1.0).catch == 1.0
    # a fail verdict rejects at every threshold (as quality.judge), whatever its scores; so does the fallback
    assert example_score({"scores": {"a": 5}, "verdict": False}) == -math.inf
    assert example_score({"scores": {"a": 5}, "verdict": True}) == 5.0
    failing = choose_threshold(["good", "good", "good", "bad"], [-math.inf, 5.0, 5.0, 1.0], 0.03)
    assert failing.false_reject == 1 / 3  # no threshold keeps it within 3%: the most lenient still rejects one


def test_a_threshold_chosen_on_one_half_is_checked_on_the_other() -> None:
    """A scripted judge at noise sigma: good examples score about 4.6, bad about 2, rounded to 1-5."""
    rows = _synthetic(400, 12)
    labels = [r["label"] for r in rows]

    def scored(sigma: float) -> list[float]:
        rng = random.Random(7)
        return [float(min(5, max(1, round((4.6 if lab == "good" else 2.0) + rng.gauss(0, sigma))))) for lab in labels]

    calibration, held = split_halves(rows, seed=0)
    clean = held_back_check(labels, scored(0.0), calibration, held, 0.03)
    assert clean["threshold"] == 5.0 and clean["meets_bound"]  # every good scores 5, every bad 2
    assert clean["held_back"]["false_reject"] == 0.0 and clean["held_back"]["catch"] == 1.0
    noisy = held_back_check(labels, scored(1.0), calibration, held, 0.03)
    held_rates = rates([labels[i] for i in held], [scored(1.0)[i] for i in held], noisy["threshold"])
    assert noisy["held_back"]["false_reject"] == held_rates.false_reject
    assert noisy["meets_bound"] is (held_rates.false_reject <= 0.03)
    assert noisy["calibration"]["false_reject"] <= 0.03 and noisy["threshold"] < 5.0
    # a bound nobody can meet on held-back data is reported as broken, not hidden
    shifted = [1.0 if lab == "bad" else 2.0 if i in held else 5.0 for i, lab in enumerate(labels)]
    strict = held_back_check(labels, shifted, calibration, held, 0.03)  # good scores drift down on the held half
    assert not strict["meets_bound"] and strict["held_back"]["false_reject"] == 1.0
    # a judge that fails good ones itself meets no bound, even where the held-back half happens to be clean
    failing_scores = [-math.inf if lab == "good" and i in calibration[:20] else 5.0 if lab == "good" else 1.0
                      for i, lab in enumerate(labels)]  # fmt: skip
    broke = held_back_check(labels, failing_scores, calibration, held, 0.03)
    assert not broke["calibration_meets_bound"] and not broke["meets_bound"]
    assert broke["held_back"]["false_reject"] == 0.0


def test_bad_file_lines_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"instruction": "x", "input": "", "output": "y", "skills": [], "label": "good"}) + "\n")
    with pytest.raises(ValueError, match="line 1"):
        load_bad(path)
