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
    """Median and mean of n values with a 95% interval (of the mean, or of the median).

    Made by `interval`; `lo` and `hi` are NaN when fewer than `MIN_SEEDS` values are finite.

    Attributes:
        n: How many finite values entered.
        median: Their median (NaN when n is 0).
        mean: Their mean (NaN when n is 0).
        lo: The interval's lower end.
        hi: The interval's upper end.
        method: What the interval is of, e.g. "t-interval of the mean"; "none" without one.

    Example:
        >>> Interval(3, 2.0, 2.0, 1.5, 2.5, "t-interval of the mean").text(".2f")
        '2.00 [1.50, 2.50] (median; 95% t-interval of the mean, 3 seeds)'
    """
    n: int
    median: float
    mean: float
    lo: float
    hi: float
    method: str

    def to_dict(self) -> dict:
        """The fields as a dict (for summary.json).

        Returns:
            {"n": ..., "median": ..., "mean": ..., "lo": ..., "hi": ..., "method": ...};
            `Interval(**d)` rebuilds it.

        Example:
            >>> interval([4.0]).to_dict()
            {'n': 1, 'median': 4.0, 'mean': 4.0, 'lo': nan, 'hi': nan, 'method': 'none'}
        """
        return asdict(self)

    def text(self, fmt: str = ".3g", scale: float = 1.0, unit: str = "") -> str:
        """The interval in words, for a verdict's statistic.

        Args:
            fmt: Format spec of each number.
            scale: Factor applied to each number first (100 for a percentage).
            unit: Written after the median and after the bracket.

        Returns:
            'median [lo, hi]unit (median; 95% method, n seeds)'; one seed: 'median (1 seed: no
            interval)'; none: 'no finished runs'.

        Example:
            >>> interval([0.97, 0.98, 0.99]).text(".1f", 100, "%")
            '98.0% [95.5, 100.5]% (median; 95% t-interval of the mean, 3 seeds)'
            >>> interval([]).text()
            'no finished runs'
        """
        if self.n == 0:
            return "no finished runs"
        med = f"{self.median * scale:{fmt}}{unit}"
        if not math.isfinite(self.lo):
            return f"{med} (1 seed: no interval)"
        return (f"{med} [{self.lo * scale:{fmt}}, {self.hi * scale:{fmt}}]{unit} "
                f"(median; 95% {self.method}, {self.n} seeds)")


def interval(values: Iterable[float], method: Literal["t", "bootstrap"] = "t",
             confidence: float = CONFIDENCE, seed: int = 0) -> Interval:
    """The median, mean and a `confidence` interval of the finite `values`.

    Args:
        values: One number per seed; NaN and ±inf are left out.
        method: "t" for the t-interval of the mean (mean ± t_{n-1} · s / √n), "bootstrap"
            for a percentile bootstrap of the median (4000 resamples).
        confidence: The interval's coverage.
        seed: Seed of the bootstrap's resampling.

    Returns:
        An `Interval`; with fewer than `MIN_SEEDS` finite values its lo and hi are NaN and
        its method is "none".

    Raises:
        ValueError: For an unknown `method`.

    Example:
        The t-interval of [1, 2, 3] is 2 ± t_{0.975, 2} · 1/√3:

        >>> iv = interval([1, 2, 3])
        >>> iv.n, iv.median, iv.mean
        (3, 2.0, 2.0)
        >>> math.isclose(iv.hi - iv.mean, _st.t.ppf(0.975, 2) / math.sqrt(3))
        True
        >>> round(float(iv.lo), 4), round(float(iv.hi), 4)
        (-0.4841, 4.4841)
        >>> interval([1.0, float("nan")]).method
        'none'
    """
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


def brief(values: Iterable[float], fmt: str = ".3g", scale: float = 1.0, *,
          few: str = "(no interval)", empty: str = "no finished runs") -> str:
    """'median [lo, hi]' of the finite `values` (95% t-interval of the mean), for the sentences
    of an experiment's observations; `Interval.text` is the long form, with method and seeds.

    Args:
        values: One number per seed; NaN and ±inf are left out.
        fmt: Format spec of each number.
        scale: Factor applied to each number first (100 for a percentage).
        few: Written after the median when there is no interval (fewer than `MIN_SEEDS`
            finite values).
        empty: The whole text when no value is finite (never a "nan").

    Returns:
        'median [lo, hi]', or 'median few' without an interval, or `empty`.

    Example:
        >>> brief([1, 2, 3])
        '2 [-0.484, 4.48]'
        >>> brief([0.97, 0.98, 0.99], ".2f", 100)
        '98.00 [95.52, 100.48]'
        >>> brief([0.5], few="(1 seed)"), brief([]), brief([], empty="n/a")
        ('0.5 (1 seed)', 'no finished runs', 'n/a')
    """
    i = interval(values)
    if i.n == 0:
        return empty
    med = f"{i.median * scale:{fmt}}"
    if i.n < MIN_SEEDS or not math.isfinite(i.lo):
        return f"{med} {few}"
    return f"{med} [{i.lo * scale:{fmt}}, {i.hi * scale:{fmt}}]"


@dataclass(frozen=True)
class Difference:
    """b − a as a difference of means, with Welch's interval and a permutation p-value.

    Made by `compare`; lo, hi and p_value are NaN when either side has fewer than
    `MIN_SEEDS` finite values.

    Attributes:
        n_a: Finite values of a.
        n_b: Finite values of b.
        diff: mean(b) − mean(a).
        lo: The interval's lower end.
        hi: The interval's upper end.
        p_value: Two-sided permutation-test p-value of the difference of means.
        method: What the interval and p-value are.

    Example:
        >>> Difference(3, 3, 0.5, 0.2, 0.8, 0.04).text(".1f")
        'difference +0.5 [+0.2, +0.8] (95%, p = 0.04)'
    """
    n_a: int
    n_b: int
    diff: float
    lo: float
    hi: float
    p_value: float
    method: str = "Welch t-interval of the difference of means; permutation-test p"

    @property
    def clear(self) -> bool:
        """Whether the interval excludes zero.

        Returns:
            True when lo > 0 or hi < 0; False when it covers zero or there is none.

        Example:
            >>> compare([1, 2, 3], [4, 5, 6]).clear, compare([1], [5]).clear
            (True, False)
        """
        return bool(math.isfinite(self.lo) and (self.lo > 0 or self.hi < 0))

    def to_dict(self) -> dict:
        """The fields and `clear` as a dict (for summary.json).

        Returns:
            {"n_a": ..., "n_b": ..., "diff": ..., "lo": ..., "hi": ..., "p_value": ...,
            "method": ..., "clear": ...}.

        Example:
            >>> Difference(2, 2, 1.0, 0.5, 1.5, 0.3).to_dict()["clear"]
            True
        """
        return {**asdict(self), "clear": self.clear}

    def text(self, fmt: str = ".3g", scale: float = 1.0, unit: str = "", *,
             names: tuple[str, str] | None = None, empty: str = "no finished run of {}"
             ) -> str:
        """The difference in words, for a verdict's statistic or an observation.

        Args:
            fmt: Format spec of each number (written with a sign).
            scale: Factor applied to each number first (100 for percentage points).
            unit: Written after the difference.
            names: What a and b are ("batch 64", "batch 1024"): a side without values is
                then named in `empty`.
            empty: Why a named side has no value, with {} for its name(s).

        Returns:
            'difference +d [+lo, +hi] (95%, p = p)', followed by ': no clear difference'
            when the interval covers zero; with one seed on a side 'difference +d (one seed
            on a side: no interval)'; with none on a side, why there is no difference.

        Example:
            >>> compare([1, 2, 3], [4, 5, 6]).text()
            'difference +3 [+0.733, +5.27] (95%, p = 0.1)'
            >>> compare([1.0], [2.0]).text(".2f", 100, " pts")
            'difference +100.00 pts (one seed on a side: no interval)'
            >>> compare([], [2.0, 3.0]).text()
            'no difference: no finished run on one side (0 vs 2 runs)'
            >>> compare([1.0, 2.0], []).text(names=("batch 64", "batch 1024"),
            ...                              empty="no model of {} reached the criterion")
            'no difference: no model of batch 1024 reached the criterion'
        """
        if not math.isfinite(self.diff):
            gone = [n for n, k in zip(names or (), (self.n_a, self.n_b)) if k == 0]
            if gone:
                return "no difference: " + empty.format(" or ".join(gone))
            return (f"no difference: no finished run on one side ({self.n_a} vs {self.n_b} "
                    "runs)")
        if not math.isfinite(self.lo):
            return (f"difference {self.diff * scale:+{fmt}}{unit} (one seed on a side: no "
                    "interval)")
        s = (f"difference {self.diff * scale:+{fmt}}{unit} [{self.lo * scale:+{fmt}}, "
             f"{self.hi * scale:+{fmt}}] (95%, p = {self.p_value:.2g})")
        return s if self.clear else s + ": no clear difference"


def compare(a: Iterable[float], b: Iterable[float], confidence: float = CONFIDENCE,
            seed: int = 0) -> Difference:
    """The difference of the means of b and a, with a 95% Welch interval and permutation p.

    Args:
        a: The values (one per seed) of the reference setting; non-finite ones left out.
        b: Those of the setting compared with it.
        confidence: The interval's coverage.
        seed: Seed of the permutation test's resampling (exact when there are few
            arrangements).

    Returns:
        A `Difference` of mean(b) − mean(a): Welch's t-interval and the two-sided
        permutation p-value; no interval with fewer than `MIN_SEEDS` values on a side.

    Example:
        >>> d = compare([1, 2, 3], [4, 5, 6])
        >>> d.diff, round(float(d.lo), 4), round(float(d.hi), 4), d.p_value
        (3.0, 0.733, 5.267, 0.1)
    """
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
    """Spearman's rank correlation over the points of a sweep (made by `trend`).

    Attributes:
        n: Points with both coordinates finite.
        rho: Spearman's ρ (NaN when undefined).
        p_value: Its two-sided p-value.

    Example:
        >>> Trend(6, -0.5, 0.31).text()
        'Spearman ρ = -0.50 (p = 0.31, n = 6)'
    """
    n: int
    rho: float
    p_value: float

    def to_dict(self) -> dict:
        """The fields as a dict (for summary.json).

        Returns:
            {"n": ..., "rho": ..., "p_value": ...}; `Trend(**d)` rebuilds it.

        Example:
            >>> Trend(5, 0.9, 0.037).to_dict()
            {'n': 5, 'rho': 0.9, 'p_value': 0.037}
        """
        return asdict(self)

    def text(self) -> str:
        """The correlation in words.

        Returns:
            'Spearman ρ = +0.90 (p = 0.037, n = 5)', or 'Spearman ρ undefined (n points)'.

        Example:
            >>> trend([1, 2], [1, 2]).text()
            'Spearman ρ undefined (2 points)'
        """
        if not math.isfinite(self.rho):
            return f"Spearman ρ undefined ({self.n} points)"
        return f"Spearman ρ = {self.rho:+.2f} (p = {self.p_value:.2g}, n = {self.n})"


def trend(x: Sequence[float], y: Sequence[float]) -> Trend:
    """Spearman's rank correlation of y with x over the pairs where both are finite.

    Args:
        x: The swept values.
        y: What was measured at each.

    Returns:
        A `Trend`; ρ and p are NaN with fewer than 3 pairs or when x or y is constant.

    Example:
        >>> t = trend([1, 2, 3, 4, 5], [1, 3, 2, 5, 7])
        >>> t.n, round(t.rho, 2), round(t.p_value, 4)
        (5, 0.9, 0.0374)
    """
    xa, ya = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[ok], ya[ok]
    if len(xa) < 3 or np.all(xa == xa[0]) or np.all(ya == ya[0]):
        return Trend(len(xa), math.nan, math.nan)
    res = _st.spearmanr(xa, ya)
    return Trend(len(xa), float(res.statistic), float(res.pvalue))


def failure_rates(statuses: Iterable[str],
                  failed: Sequence[str] = ("collapsed", "diverged", "missed")) -> dict:
    """Counts and rates of each failure status among the runs of one setting.

    Args:
        statuses: The status of each run.
        failed: The statuses that count as failures.

    Returns:
        {"runs": n, status: count, f"{status}_rate": count / n, ...} for each failed
        status (rates NaN without runs).

    Example:
        >>> failure_rates(["ok", "diverged", "ok", "missed"], failed=("diverged",))
        {'runs': 4, 'diverged': 1, 'diverged_rate': 0.25}
    """
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
    """A published claim tested by this run (SCIENCE.md §4).

    Attributes:
        claim: What the paper says, in a sentence.
        source: Who says it, e.g. "Keskar et al. 2017 (arXiv:1609.04836)".
        published: The paper's number.
        statistic: What was computed here, with its interval or p-value.
        rule: How the outcome follows from the statistic.
        outcome: "reproduced", "not reproduced", "inconclusive" or "pipeline check".

    Example:
        >>> d = compare([1.0, 1.1, 0.9], [2.0, 2.1, 1.9])
        >>> v = Verdict("b beats a", "A. Author 2020", "+1.0", d.text(), DIFFERENCE_RULE,
        ...             outcome_of_difference(d, +1))
        >>> v.outcome
        'reproduced'
    """
    claim: str       # what the paper says, in a sentence
    source: str      # "Keskar et al. 2017 (arXiv:1609.04836)"
    published: str   # the paper's number, e.g. "φ 1.23 ± 0.83 (small batch) vs 205 ± 70"
    statistic: str   # what was computed here, with its interval or p-value
    rule: str        # how the outcome follows from the statistic
    outcome: Outcome

    def to_dict(self) -> dict:
        """The fields as a dict (for summary.json).

        Returns:
            {"claim": ..., "source": ..., "published": ..., "statistic": ..., "rule": ...,
            "outcome": ...}.

        Example:
            >>> pipeline_check("c", "s", "p", "why").to_dict()["outcome"]
            'pipeline check'
        """
        return asdict(self)


def outcome_of_difference(d: Difference, expected_sign: int, min_seeds: int = MIN_SEEDS
                          ) -> Outcome:
    """Reproduced when the interval excludes zero on the expected side; not reproduced when it
    excludes zero on the other side; inconclusive when it covers zero or seeds are too few.

    Args:
        d: The difference b − a.
        expected_sign: +1 when the claim is b > a, −1 when it is b < a.
        min_seeds: Fewest finite values on each side for any verdict.

    Returns:
        "reproduced", "not reproduced" or "inconclusive".

    Example:
        >>> d = compare([1.0, 1.1, 0.9], [2.0, 2.1, 1.9])
        >>> outcome_of_difference(d, +1), outcome_of_difference(d, -1)
        ('reproduced', 'not reproduced')
        >>> outcome_of_difference(d, +1, min_seeds=4)
        'inconclusive'
    """
    if min(d.n_a, d.n_b) < min_seeds or not math.isfinite(d.lo):
        return "inconclusive"
    if not d.clear:
        return "inconclusive"
    return "reproduced" if (d.diff > 0) == (expected_sign > 0) else "not reproduced"


def outcome_of_trend(t: Trend, expected_sign: int, alpha: float = 0.05,
                     min_points: int = 5) -> Outcome:
    """Reproduced when ρ has the expected sign with p < alpha; not reproduced when it has the
    other sign with p < alpha; inconclusive otherwise.

    Args:
        t: The trend.
        expected_sign: +1 when the claim is an increasing trend, −1 a decreasing one.
        alpha: Largest p-value that counts.
        min_points: Fewest points for any verdict.

    Returns:
        "reproduced", "not reproduced" or "inconclusive".

    Example:
        >>> t = trend([1, 2, 3, 4, 5], [1, 3, 2, 5, 7])
        >>> outcome_of_trend(t, +1), outcome_of_trend(t, -1), outcome_of_trend(t, +1, 0.01)
        ('reproduced', 'not reproduced', 'inconclusive')
    """
    if t.n < min_points or not math.isfinite(t.rho) or t.p_value >= alpha:
        return "inconclusive"
    return "reproduced" if (t.rho > 0) == (expected_sign > 0) else "not reproduced"


DIFFERENCE_RULE = ("reproduced if the 95% interval of the difference excludes 0 on the "
                   "published side; not reproduced if it excludes 0 on the other side; "
                   "inconclusive if it covers 0 or fewer than 2 seeds per side finished")
TREND_RULE = ("reproduced if Spearman's ρ has the published sign with p < 0.05; not "
              "reproduced if the other sign with p < 0.05; otherwise inconclusive")


def pipeline_check(claim: str, source: str, published: str, why: str) -> Verdict:
    """The verdict of a run too short to be evidence (a quick profile's under-trained models).

    Args:
        claim: The published claim, in a sentence.
        source: Who says it.
        published: The paper's number.
        why: Why this run is no evidence; it stands as the statistic.

    Returns:
        A `Verdict` with outcome "pipeline check".

    Example:
        >>> v = pipeline_check("wide nets generalize", "Zhang et al. 2017", "-", "1 epoch")
        >>> v.statistic, v.outcome
        ('1 epoch', 'pipeline check')
    """
    return Verdict(claim, source, published, why, "no verdict from under-trained models",
                   "pipeline check")


def published_for(published: str, measured_on: str, data: str) -> str:
    """The paper's number, saying so when it was measured on other data than this run's
    (the verdict then judges the paper's qualitative claim only; docs/METHODS.md).

    Args:
        published: The paper's number.
        measured_on: The data the paper measured it on ("MNIST", "CIFAR-10").
        data: This run's data, as `experiments.inputs.tag` names it.

    Returns:
        `published`, or `published` followed by what it was measured on.

    Example:
        >>> published_for("98.6-99.2%", "MNIST", "MNIST")
        '98.6-99.2%'
        >>> published_for("99.34%", "CIFAR-10", "MNIST")
        '99.34% (measured on CIFAR-10; this run: MNIST, so the qualitative claim is judged)'
    """
    if data == measured_on:
        return published
    return (f"{published} (measured on {measured_on}; this run: {data}, so the qualitative "
            "claim is judged)")


def data_of(table) -> str:
    """The data a results table's runs trained on (its `data` column; MNIST before it had one).

    Example:
        >>> import pandas as pd
        >>> data_of(pd.DataFrame({"x": [1]})), data_of(pd.DataFrame({"data": ["CIFAR-10"]}))
        ('MNIST', 'CIFAR-10')
    """
    if "data" in table and len(table):
        return str(table["data"].iloc[0])
    return "MNIST"
