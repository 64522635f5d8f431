"""Statistics over seeds and reproduction verdicts (../shared/SCIENCE.md §4).

One run per setting shows one draw; every experiment therefore runs several seeds per
setting and summarises them here:

- `interval(values)`: median, mean and a 95% interval of the mean. The default is the
  t-interval (mean ± t_{n-1, 0.975} · s / √n), which stays honest with 2–5 seeds; a
  percentile bootstrap of the median (`scipy.stats.bootstrap`) is available with
  `method="bootstrap"` and is narrower than it should be below ~8 seeds.
- `compare(a, b)`: the difference of means b − a with Welch's t-interval and an exact (or
  Monte-Carlo) permutation-test p-value (`scipy.stats.permutation_test`). An interval that
  covers zero reads "no clear difference".
- `trend(x, y)`: Spearman's ρ with its p-value, for monotone trends over a sweep.
- `Verdict`: a published claim, the statistic computed here, the rule, and the outcome:
  "reproduced", "not reproduced", "inconclusive", or "pipeline check" (an under-trained quick
  run that issues no verdict).

Non-finite values and failed runs never enter a statistic: callers pass only the values of
runs that finished (and count the failures with `failure_rates`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from scipy import stats as _st

CONFIDENCE = 0.95
MIN_SEEDS = 2  # fewer finite values than this: no interval, verdicts are inconclusive

Outcome = Literal["reproduced", "not reproduced", "inconclusive", "pipeline check"]


def _finite(values: Iterable[float]) -> np.ndarray:
    a = np.asarray(list(values), dtype=np.float64).ravel()
    return a[np.isfinite(a)]


@dataclass(frozen=True)
class Interval:
    """Median and mean of n values with a 95% interval (of the mean, or of the median)."""
    n: int
    median: float
    mean: float
    lo: float
    hi: float
    method: str

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self, fmt: str = ".3g", scale: float = 1.0, unit: str = "") -> str:
        """'0.981 [0.975, 0.986] (median; 95% t-interval of the mean, 3 seeds)'."""
        if self.n == 0:
            return "no finished runs"
        med = f"{self.median * scale:{fmt}}{unit}"
        if not math.isfinite(self.lo):
            return f"{med} (1 seed: no interval)"
        return (f"{med} [{self.lo * scale:{fmt}}, {self.hi * scale:{fmt}}]{unit} "
                f"(median; 95% {self.method}, {self.n} seeds)")


def interval(values: Iterable[float], method: Literal["t", "bootstrap"] = "t",
             confidence: float = CONFIDENCE, seed: int = 0) -> Interval:
    """The median, mean and a `confidence` interval of the finite `values`."""
    a = _finite(values)
    n = len(a)
    if n == 0:
        return Interval(0, math.nan, math.nan, math.nan, math.nan, "none")
    med, mean = float(np.median(a)), float(a.mean())
    if n < MIN_SEEDS:
        return Interval(n, med, mean, math.nan, math.nan, "none")
    if method == "t":
        half = _st.t.ppf(0.5 + confidence / 2, n - 1) * a.std(ddof=1) / math.sqrt(n)
        return Interval(n, med, mean, mean - half, mean + half, "t-interval of the mean")
    if method == "bootstrap":
        if np.all(a == a[0]):
            return Interval(n, med, mean, med, med, "bootstrap of the median")
        res = _st.bootstrap((a,), np.median, confidence_level=confidence, method="percentile",
                            n_resamples=4000, random_state=np.random.default_rng(seed))
        ci = res.confidence_interval
        return Interval(n, med, mean, float(ci.low), float(ci.high), "bootstrap of the median")
    raise ValueError(f"unknown interval method {method!r}")


@dataclass(frozen=True)
class Difference:
    """b − a as a difference of means, with Welch's interval and a permutation p-value."""
    n_a: int
    n_b: int
    diff: float
    lo: float
    hi: float
    p_value: float
    method: str = "Welch t-interval of the difference of means; permutation-test p"

    @property
    def clear(self) -> bool:
        """True when the interval excludes zero."""
        return bool(math.isfinite(self.lo) and (self.lo > 0 or self.hi < 0))

    def to_dict(self) -> dict:
        return {**asdict(self), "clear": self.clear}

    def text(self, fmt: str = ".3g", scale: float = 1.0, unit: str = "") -> str:
        if not math.isfinite(self.lo):
            return f"difference {self.diff * scale:+{fmt}}{unit} (too few seeds for an interval)"
        s = (f"difference {self.diff * scale:+{fmt}}{unit} [{self.lo * scale:+{fmt}}, "
             f"{self.hi * scale:+{fmt}}] (95%, p = {self.p_value:.2g})")
        return s if self.clear else s + ": no clear difference"


def compare(a: Iterable[float], b: Iterable[float], confidence: float = CONFIDENCE,
            seed: int = 0) -> Difference:
    """The difference of the means of b and a, with a 95% Welch interval and permutation p."""
    xa, xb = _finite(a), _finite(b)
    na, nb = len(xa), len(xb)
    if na == 0 or nb == 0:
        return Difference(na, nb, math.nan, math.nan, math.nan, math.nan)
    diff = float(xb.mean() - xa.mean())
    if na < MIN_SEEDS or nb < MIN_SEEDS:
        return Difference(na, nb, diff, math.nan, math.nan, math.nan)
    va, vb = xa.var(ddof=1) / na, xb.var(ddof=1) / nb
    se = math.sqrt(va + vb)
    if se == 0:
        lo = hi = diff
        p = 1.0 if diff == 0 else 0.0
        return Difference(na, nb, diff, lo, hi, p)
    dof = (va + vb) ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1))
    half = _st.t.ppf(0.5 + confidence / 2, dof) * se
    p = _st.permutation_test((xb, xa), lambda u, v: np.mean(u) - np.mean(v),
                             permutation_type="independent", n_resamples=9999,
                             alternative="two-sided", random_state=np.random.default_rng(seed)
                             ).pvalue
    return Difference(na, nb, diff, diff - half, diff + half, float(p))


@dataclass(frozen=True)
class Trend:
    n: int
    rho: float
    p_value: float

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        if not math.isfinite(self.rho):
            return f"Spearman ρ undefined ({self.n} points)"
        return f"Spearman ρ = {self.rho:+.2f} (p = {self.p_value:.2g}, n = {self.n})"


def trend(x: Sequence[float], y: Sequence[float]) -> Trend:
    """Spearman's rank correlation of y with x over the pairs where both are finite."""
    xa, ya = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[ok], ya[ok]
    if len(xa) < 3 or np.all(xa == xa[0]) or np.all(ya == ya[0]):
        return Trend(len(xa), math.nan, math.nan)
    res = _st.spearmanr(xa, ya)
    return Trend(len(xa), float(res.statistic), float(res.pvalue))


def failure_rates(statuses: Iterable[str],
                  failed: Sequence[str] = ("collapsed", "diverged", "missed")) -> dict:
    """Counts and rates of each failure status among the runs of one setting."""
    s = list(statuses)
    n = len(s)
    out: dict = {"runs": n}
    for f in failed:
        k = sum(1 for x in s if x == f)
        out[f] = k
        out[f"{f}_rate"] = k / n if n else math.nan
    return out


@dataclass(frozen=True)
class Verdict:
    """A published claim tested by this run (SCIENCE.md §4)."""
    claim: str       # what the paper says, in a sentence
    source: str      # "Keskar et al. 2017 (arXiv:1609.04836)"
    published: str   # the paper's number, e.g. "φ 1.23 ± 0.83 (small batch) vs 205 ± 70"
    statistic: str   # what was computed here, with its interval or p-value
    rule: str        # how the outcome follows from the statistic
    outcome: Outcome

    def to_dict(self) -> dict:
        return asdict(self)


def outcome_of_difference(d: Difference, expected_sign: int, min_seeds: int = MIN_SEEDS
                          ) -> Outcome:
    """Reproduced when the interval excludes zero on the expected side; not reproduced when it
    excludes zero on the other side; inconclusive when it covers zero or seeds are too few."""
    if min(d.n_a, d.n_b) < min_seeds or not math.isfinite(d.lo):
        return "inconclusive"
    if not d.clear:
        return "inconclusive"
    return "reproduced" if (d.diff > 0) == (expected_sign > 0) else "not reproduced"


def outcome_of_trend(t: Trend, expected_sign: int, alpha: float = 0.05,
                     min_points: int = 5) -> Outcome:
    """Reproduced when ρ has the expected sign with p < alpha; not reproduced when it has the
    other sign with p < alpha; inconclusive otherwise."""
    if t.n < min_points or not math.isfinite(t.rho) or t.p_value >= alpha:
        return "inconclusive"
    return "reproduced" if (t.rho > 0) == (expected_sign > 0) else "not reproduced"


DIFFERENCE_RULE = ("reproduced if the 95% interval of the difference excludes 0 on the "
                   "published side; not reproduced if it excludes 0 on the other side; "
                   "inconclusive if it covers 0 or fewer than 2 seeds per side finished")
TREND_RULE = ("reproduced if Spearman's ρ has the published sign with p < 0.05; not "
              "reproduced if the other sign with p < 0.05; otherwise inconclusive")


def pipeline_check(claim: str, source: str, published: str, why: str) -> Verdict:
    """The verdict of a run too short to be evidence (a quick profile's under-trained models)."""
    return Verdict(claim, source, published, why, "no verdict from under-trained models",
                   "pipeline check")
