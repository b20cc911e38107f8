"""The square law of papers.md §B: across models, success on MATH^2 (pair questions) Y is close to the square
of success on MATH (single-skill questions) X. ``fit_power_law`` fits Y = X^a by least squares on
log Y = a log X (a line through the origin), with a t-based confidence interval for ``a`` and R² in log space;
``plot`` draws the models, the fitted curve and Y = X² into a PNG (matplotlib, Agg backend).
"""

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Fit:
    a: float
    ci_low: float | None  # None with a single point (no degrees of freedom left)
    ci_high: float | None
    r2: float | None  # in log space, against the mean of log Y; None with fewer than 2 distinct log Y
    n: int  # points used
    dropped: int = 0  # points with X or Y outside (0, 1), or X = 1: log-uninformative
    confidence: float = 0.95

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModelPoint:
    model: str
    x: float  # success on single-skill (MATH-style) questions
    y: float  # success on pair (MATH^2) questions


def fit_power_law(points: Sequence[tuple[float, float]], confidence: float = 0.95) -> Fit:
    """Least squares of log Y = a log X through the origin over the points with 0 < X < 1 and 0 < Y <= 1."""
    used = [(x, y) for x, y in points if 0 < x < 1 and 0 < y <= 1]
    if not used:
        raise ValueError("no point with 0 < X < 1 and 0 < Y <= 1 to fit Y = X^a on")
    lx = np.log(np.array([x for x, _ in used], dtype=float))
    ly = np.log(np.array([y for _, y in used], dtype=float))
    sxx = float(lx @ lx)
    a = float(lx @ ly) / sxx
    residuals = ly - a * lx
    n = len(used)
    ci_low = ci_high = None
    if n >= 2:
        s2 = float(residuals @ residuals) / (n - 1)
        se = math.sqrt(s2 / sxx)
        from scipy import stats  # here, not at import: scipy takes ~2 s to load and every CLI process imports this

        t = float(stats.t.ppf(0.5 + confidence / 2, n - 1))
        ci_low, ci_high = a - t * se, a + t * se
    total = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1 - float(residuals @ residuals) / total if n >= 2 and total > 0 else None
    return Fit(a, ci_low, ci_high, r2, n, len(points) - n, confidence)


def plot(models: Sequence[ModelPoint], fit: Fit, path: Path, title: str = "") -> Path:
    """A PNG: each model's (X, Y), the fitted Y = X^a and the square law Y = X²."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(0.0, 1.0, 201)
    fig, ax = plt.subplots(figsize=(6.4, 5.2), dpi=120)
    try:
        ci = f" [{fit.ci_low:.2f}, {fit.ci_high:.2f}]" if fit.ci_low is not None and fit.ci_high is not None else ""
        r2 = f", R²={fit.r2:.3f}" if fit.r2 is not None else ""
        ax.plot(grid, grid**fit.a, color="tab:blue", label=f"fit: Y = X^{fit.a:.2f}{ci}{r2}")
        ax.plot(grid, grid**2, color="tab:gray", linestyle="--", label="Y = X²")
        ax.plot(grid, grid, color="tab:gray", linestyle=":", linewidth=0.8, label="Y = X")
        ax.scatter([m.x for m in models], [m.y for m in models], color="tab:red", zorder=3, label="models")
        for m in models:
            ax.annotate(m.model, (m.x, m.y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("X: success on single-skill questions (MATH)")
        ax.set_ylabel("Y: success on skill-pair questions (MATH²)")
        ax.set_title(title or f"square law over {len(models)} model(s)")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
