"""The judge-eval report (``GET /v1/judge-evals/{id}/report``): pure arithmetic over a job's records.

For each labelled example: did the default checks reject it (``judge_eval.heuristics``), and what did the judge
say (``judge``: scores per criterion, its pass/fail). The judge rejects at ``min_score`` t exactly as
``quality.judge`` does in a job: its verdict is fail, or a criterion scored below t; the overall score is the
lowest criterion's. An example the judge gave no readable verdict (after its one retry) or whose call failed
is an error: counted apart, by label, never as a pass, and left out of the judge's and the combined rates.
"""

import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from schemas.curation import JudgeSettings
from schemas.examples import Example, extras_of
from schemas.jobs import JobRecord, JobStatus, JudgeEvalExtras, JudgeEvalJobSpec
from schemas.judge_eval import (
    AUC_NEAR_HALF,
    NO_KIND,
    STRONG_CORRELATION,
    Bias,
    Cost,
    ErrorCounts,
    JudgeEvalReport,
    Rates,
    RateSet,
    ThresholdPoint,
)

SCORES = range(1, 6)


@dataclass
class Row:
    label: str
    kind: str
    words: int
    heuristics: list[str] | None  # None: no record (yet)
    scores: dict[str, int] | None  # None: an error
    verdict: bool
    error: str = ""

    @property
    def bad(self) -> bool:
        return self.label == "bad"


def _error_reason(example: Example) -> str:
    if example.judge is None:
        return str(example.verdict.reasons[0]) if example.verdict.reasons else "no verdict"
    reason = example.judge.reason.lower()
    for prefix, name in (
        ("judge answer unparseable", "unparseable"),
        ("judge request refused", "refused"),
        ("judge call failed", "llm_error"),
    ):
        if reason.startswith(prefix):
            return name
    return "no scores"


def rows_of(spec: JudgeEvalJobSpec, found: dict[int, Example]) -> tuple[list[Row], list[str]]:
    """One row per labelled example (in file order), and the judge's criteria (as its records name them)."""
    criteria: dict[str, None] = {}
    extras = {i: extras_of(e, JudgeEvalExtras).judge_eval for i, e in found.items()}
    for row in extras.values():
        if row is not None:
            criteria.update(dict.fromkeys(row.criteria))
    if not criteria:
        for record in found.values():
            if record.judge is not None:
                criteria.update(dict.fromkeys(record.judge.scores))
    names = list(criteria)
    rows = []
    for i, labelled in enumerate(spec.examples):
        extra = extras.get(i)
        kind = labelled.kind or NO_KIND
        words = extra.words if extra is not None else len(labelled.output.split())
        example = found.get(i)
        if example is None:
            rows.append(Row(labelled.label, kind, words, None, None, False, "no record"))
            continue
        heuristics = extra.heuristics if extra is not None else None
        judge = example.judge
        if judge is None or not judge.scores or any(c not in judge.scores for c in names):
            rows.append(Row(labelled.label, kind, words, heuristics, None, False, _error_reason(example)))
            continue
        scores = {c: judge.scores[c] for c in names}
        rows.append(Row(labelled.label, kind, words, heuristics, scores, judge.verdict))
    return rows, names


def overall(row: Row) -> int:
    assert row.scores is not None
    return min(row.scores.values())


def judge_rejects(row: Row, min_score: int, criterion: str = "overall") -> bool:
    assert row.scores is not None
    score = overall(row) if criterion == "overall" else row.scores[criterion]
    return not row.verdict or score < min_score


def heuristics_reject(row: Row) -> bool:
    return bool(row.heuristics)


def rates(rows: Iterable[Row], rejects: Callable[[Row], bool]) -> Rates:
    bad = good = caught = false_rejects = 0
    for row in rows:
        rejected = rejects(row)
        if row.bad:
            bad, caught = bad + 1, caught + rejected
        else:
            good, false_rejects = good + 1, false_rejects + rejected
    return Rates.of(caught, bad, false_rejects, good)


def rate_set(rows: list[Row], rejects: Callable[[Row], bool]) -> RateSet:
    kinds = sorted({r.kind for r in rows})
    return RateSet(
        overall=rates(rows, rejects),
        per_kind={k: rates((r for r in rows if r.kind == k), rejects) for k in kinds},
    )


def point(judged: list[Row], min_score: int, criterion: str = "overall") -> ThresholdPoint:
    return ThresholdPoint(
        criterion=criterion,
        min_score=min_score,
        judge=rates(judged, lambda r: judge_rejects(r, min_score, criterion)),
        combined=rates(judged, lambda r: heuristics_reject(r) or judge_rejects(r, min_score, criterion)),
    )


def choose(curve: list[ThresholdPoint], bound: float) -> tuple[ThresholdPoint | None, str]:
    """The min_score catching most bad examples with a false-reject rate within ``bound`` (ties: fewer false
    rejects, then the lower min_score)."""
    if not curve or curve[0].judge.good == 0 or curve[0].judge.bad == 0:
        return None, "no threshold chosen: the judge gave readable verdicts on too few good or bad examples"
    within = [p for p in curve if (p.judge.false_reject_rate or 0.0) <= bound]
    if not within:
        lowest = min(p.judge.false_reject_rate or 0.0 for p in curve)
        return None, (
            f"no min_score keeps false rejects within {bound:.1%}: even the most lenient rejects {lowest:.1%} of "
            "the good examples (the judge fails them itself)"
        )
    best = min(within, key=lambda p: (-(p.judge.catch_rate or 0.0), p.judge.false_reject_rate or 0.0, p.min_score))
    return best, (
        f"min_score {best.min_score} catches {best.judge.caught} of {best.judge.bad} bad examples "
        f"({best.judge.catch_rate or 0:.1%}) and rejects {best.judge.false_rejects} of {best.judge.good} good ones "
        f"({best.judge.false_reject_rate or 0:.1%}; bound {bound:.1%})"
    )


def distribution(scores: Iterable[int]) -> dict[str, int]:
    counted = Counter(scores)
    return {str(s): counted.get(s, 0) for s in SCORES}


def auc(good: list[int], bad: list[int]) -> float | None:
    """Mann-Whitney: P(a good example's score > a bad one's), ties counted half."""
    if not good or not bad:
        return None
    bad_counts = Counter(bad)
    wins = 0.0
    for g in good:
        wins += sum(n for b, n in bad_counts.items() if b < g) + 0.5 * bad_counts.get(g, 0)
    return wins / (len(good) * len(bad))


def pearson(x: list[float], y: list[float]) -> float | None:
    n = len(x)
    if n < 3:
        return None
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return None
    return sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / math.sqrt(sxx * syy)


def ranks(values: list[float]) -> list[float]:
    """Average ranks (1-based), ties sharing the mean of their positions."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    found = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            found[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return found


def spearman(x: list[float], y: list[float]) -> float | None:
    return pearson(ranks(x), ranks(y))


def bias(judged: list[Row]) -> Bias:
    good = [r for r in judged if not r.bad]
    area = auc([overall(r) for r in good], [overall(r) for r in judged if r.bad])
    words, scores = [float(r.words) for r in good], [float(overall(r)) for r in good]
    rho, r = spearman(words, scores), pearson(words, scores)
    found = Bias(
        auc=area,
        separates=None if area is None else area - 0.5 >= AUC_NEAR_HALF,
        length_spearman=rho,
        length_pearson=r,
        length_bias=None if rho is None else abs(rho) >= STRONG_CORRELATION,
    )
    if area is None:
        found.warnings.append("AUC not measured: the judge read too few good or bad examples")
    elif abs(area - 0.5) < AUC_NEAR_HALF:
        found.warnings.append(
            f"this judge does not separate good from bad (AUC {area:.2f}, near 0.5): its scores are as good as a "
            "coin; do not trust it to filter a run"
        )
    elif area < 0.5:
        found.warnings.append(f"this judge scores bad examples above good ones (AUC {area:.2f}): do not use it")
    if found.length_bias and rho is not None:
        way = "longer" if rho > 0 else "shorter"
        found.warnings.append(
            f"on the good examples this judge's score follows response length (Spearman {rho:+.2f}): it favours "
            f"{way} answers"
        )
    return found


def report(record: JobRecord, status: JobStatus, found: dict[int, Example]) -> JudgeEvalReport:
    spec = record.spec
    assert isinstance(spec, JudgeEvalJobSpec)
    rows, criteria = rows_of(spec, found)
    recorded = [r for r in rows if r.heuristics is not None]
    judged = [r for r in rows if r.scores is not None]
    errors = [r for r in rows if r.scores is None]
    curve = [point(judged, t) for t in SCORES]
    chosen, note = choose(curve, spec.max_false_reject)
    at = chosen.min_score if chosen is not None else JudgeSettings().min_score
    heuristic_reasons = Counter(reason for r in recorded for reason in (r.heuristics or [])[:1])
    found_bias = bias(judged)
    if chosen is None:
        found_bias.warnings.append(note)
    if errors:
        found_bias.warnings.append(
            f"{len(errors)} of {len(rows)} examples have no readable verdict from the judge (errors, not passes)"
        )
    counters = status.counters
    return JudgeEvalReport(
        job_id=record.id,
        state=status.state.value,
        settled=status.settled,
        endpoint=record.endpoint,
        model=record.model,
        examples=len(rows),
        good=sum(not r.bad for r in rows),
        bad=sum(r.bad for r in rows),
        judged=len(judged),
        errors=ErrorCounts(
            total=len(errors),
            good=sum(not r.bad for r in errors),
            bad=sum(r.bad for r in errors),
            by_reason=dict(sorted(Counter(r.error for r in errors).items())),
        ),
        criteria=criteria,
        max_false_reject=spec.max_false_reject,
        heuristics=rate_set(recorded, heuristics_reject),
        heuristic_reasons=dict(heuristic_reasons.most_common()),
        judge_min_score=at,
        judge=rate_set(judged, lambda r: judge_rejects(r, at)),
        combined=rate_set(judged, lambda r: heuristics_reject(r) or judge_rejects(r, at)),
        score_distribution={
            "good": distribution(overall(r) for r in judged if not r.bad),
            "bad": distribution(overall(r) for r in judged if r.bad),
        },
        criterion_distribution={
            c: {
                "good": distribution(r.scores[c] for r in judged if not r.bad and r.scores),
                "bad": distribution(r.scores[c] for r in judged if r.bad and r.scores),
            }
            for c in criteria
        },
        curve=curve,
        criterion_curves={c: [point(judged, t, c) for t in SCORES] for c in criteria},
        chosen=chosen,
        chosen_note=note,
        bias=found_bias,
        cost=Cost(
            llm_calls=counters.llm_calls,
            prompt_tokens=counters.prompt_tokens,
            completion_tokens=counters.completion_tokens,
            cost_usd=counters.cost_usd,
        ),
    )
