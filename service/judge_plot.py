"""The judge-eval report as one PNG (drawn by the CLI from ``report.json``, matplotlib's Agg backend): the
judge's overall score for good vs bad, catch rate against false-reject rate over every ``min_score`` (overall
and per criterion, with the heuristics and the chosen threshold), catch rate per kind, and the bias checks."""

from pathlib import Path

from schemas.judge_eval import JudgeEvalReport, Rates


def _pct(value: float | None) -> float:
    return 0.0 if value is None else 100.0 * value


def plot(report: JudgeEvalReport, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 9), dpi=110)
    try:
        ax = axes[0][0]
        levels = [str(s) for s in range(1, 6)]
        good = [report.score_distribution["good"][s] for s in levels]
        bad = [report.score_distribution["bad"][s] for s in levels]
        xs = range(len(levels))
        ax.bar([x - 0.2 for x in xs], good, width=0.4, color="tab:green", label=f"good ({sum(good)})")
        ax.bar([x + 0.2 for x in xs], bad, width=0.4, color="tab:red", label=f"bad ({sum(bad)})")
        ax.set_xticks(list(xs), levels)
        ax.set_xlabel("overall score (lowest criterion)")
        ax.set_ylabel("examples")
        auc = f"AUC {report.bias.auc:.2f}" if report.bias.auc is not None else "AUC n/a"
        ax.set_title(f"judge scores, good vs bad ({auc})")
        ax.legend(fontsize=8)

        ax = axes[0][1]
        for criterion, curve in report.criterion_curves.items():
            ax.plot(
                [_pct(p.judge.false_reject_rate) for p in curve],
                [_pct(p.judge.catch_rate) for p in curve],
                linewidth=0.8,
                alpha=0.5,
                marker=".",
                label=criterion,
            )
        fr = [_pct(p.judge.false_reject_rate) for p in report.curve]
        catch = [_pct(p.judge.catch_rate) for p in report.curve]
        ax.plot(fr, catch, color="black", marker="o", linewidth=2, label="overall (min_score)")
        for p, x, y in zip(report.curve, fr, catch, strict=True):
            ax.annotate(str(p.min_score), (x, y), textcoords="offset points", xytext=(5, -10), fontsize=8)
        h = report.heuristics.overall
        ax.scatter([_pct(h.false_reject_rate)], [_pct(h.catch_rate)], marker="s", color="tab:blue", zorder=3,
                   label="heuristics")  # fmt: skip
        if report.chosen is not None:
            c = report.chosen
            chosen = f"chosen: min_score {c.min_score}"
            ax.scatter([_pct(c.judge.false_reject_rate)], [_pct(c.judge.catch_rate)], s=160, facecolors="none",
                       edgecolors="tab:orange", linewidths=2, zorder=4, label=chosen)  # fmt: skip
            ax.scatter([_pct(c.combined.false_reject_rate)], [_pct(c.combined.catch_rate)], marker="*", s=120,
                       color="tab:purple", zorder=4, label="heuristics + chosen judge")  # fmt: skip
        ax.axvline(100 * report.max_false_reject, color="tab:gray", linestyle="--", linewidth=1, label="bound")
        ax.set_xlim(-2, 102)
        ax.set_ylim(-2, 102)
        ax.set_xlabel("false-reject rate on good examples (%)")
        ax.set_ylabel("catch rate on bad examples (%)")
        ax.set_title("catch rate vs false rejects, every min_score")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")

        ax = axes[1][0]
        kinds = [k for k, r in report.heuristics.per_kind.items() if r.bad]
        width = 0.27
        for offset, (name, rates) in zip(
            (-width, 0.0, width),
            (("heuristics", report.heuristics.per_kind), ("judge", report.judge.per_kind),
             ("both", report.combined.per_kind)),
            strict=True,
        ):  # fmt: skip
            values = [_pct(rates.get(k, Rates()).catch_rate) for k in kinds]
            ax.bar([i + offset for i in range(len(kinds))], values, width=width, label=name)
        ax.set_xticks(range(len(kinds)), kinds, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 105)
        ax.set_ylabel("catch rate (%)")
        ax.set_title(f"bad examples caught per kind (judge at min_score {report.judge_min_score})")
        ax.legend(fontsize=8)

        ax = axes[1][1]
        ax.axis("off")
        b = report.bias
        lines = [
            f"judge: {report.endpoint} ({report.model})",
            f"examples: {report.examples} ({report.good} good, {report.bad} bad); judged {report.judged}",
            f"errors (no readable verdict): {report.errors.total} ({report.errors.good} good, {report.errors.bad} bad)",
            auc,
            "length bias (good set): "
            + (f"Spearman {b.length_spearman:+.2f}" if b.length_spearman is not None else "n/a")
            + (f", Pearson {b.length_pearson:+.2f}" if b.length_pearson is not None else ""),
            f"calls {report.cost.llm_calls}, tokens {report.cost.prompt_tokens + report.cost.completion_tokens}, "
            f"cost ${report.cost.cost_usd:.4f}",
            "",
            report.chosen_note,
            *[f"WARNING: {w}" for w in b.warnings],
        ]
        ax.text(0.0, 1.0, "\n".join(_wrap(line) for line in lines), va="top", family="monospace", fontsize=8)
        fig.suptitle(f"judge-eval {report.job_id}")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path


def _wrap(line: str, width: int = 70) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(line, width)) if line else ""
