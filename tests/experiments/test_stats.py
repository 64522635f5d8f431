"""experiments.stats against independent references: closed-form t-intervals, scipy's
bootstrap and Welch test, and verdicts on constructed tables whose answer is known."""

import math

import numpy as np
import pytest
from scipy import stats as st

from dlscope.experiments import stats

DATA = [0.981, 0.975, 0.986, 0.979, 0.990]


def test_t_interval_closed_form():
    a = np.array(DATA)
    iv = stats.interval(a)
    # closed form: mean +- t_{4, .975} s / sqrt(5), t_{4,.975} = 2.7764451051977987
    half = 2.7764451051977987 * a.std(ddof=1) / math.sqrt(5)
    assert iv.mean == pytest.approx(a.mean(), abs=1e-15)
    assert iv.lo == pytest.approx(a.mean() - half, rel=1e-12)
    assert iv.hi == pytest.approx(a.mean() + half, rel=1e-12)
    assert iv.median == 0.981 and iv.n == 5


def test_bootstrap_matches_scipy():
    a = np.array(DATA)
    iv = stats.interval(a, method="bootstrap", seed=3)
    ref = st.bootstrap((a,), np.median, method="percentile", n_resamples=4000,
                       random_state=np.random.default_rng(3)).confidence_interval
    assert (iv.lo, iv.hi) == (ref.low, ref.high)


def test_non_finite_excluded_and_too_few():
    iv = stats.interval([1.0, math.nan, math.inf])
    assert iv.n == 1 and math.isnan(iv.lo) and "no interval" in iv.text()
    assert stats.interval([]).n == 0


def test_welch_difference_matches_scipy():
    a, b = [1.0, 1.2, 0.9, 1.1], [1.6, 1.9, 1.7, 2.2, 1.8]
    d = stats.compare(a, b)
    ref = st.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
    assert d.diff == pytest.approx(np.mean(b) - np.mean(a))
    assert (d.lo, d.hi) == (pytest.approx(ref.low, rel=1e-10), pytest.approx(ref.high, rel=1e-10))
    assert d.clear and d.p_value < 0.05


def test_verdicts_on_constructed_tables():
    clear = stats.compare([1.0, 1.1, 0.9], [2.0, 2.1, 1.9])
    assert stats.outcome_of_difference(clear, +1) == "reproduced"
    assert stats.outcome_of_difference(clear, -1) == "not reproduced"
    none = stats.compare([1.0, 1.5, 0.5], [1.1, 0.4, 1.6])
    assert not none.clear and "no clear difference" in none.text()
    assert stats.outcome_of_difference(none, +1) == "inconclusive"
    few = stats.compare([1.0], [5.0])
    assert stats.outcome_of_difference(few, +1) == "inconclusive"


def test_trend_outcomes():
    x = np.arange(10.0)
    up = stats.trend(x, x ** 2)
    assert up.rho == pytest.approx(1.0) and stats.outcome_of_trend(up, +1) == "reproduced"
    assert stats.outcome_of_trend(up, -1) == "not reproduced"
    flat = stats.trend(x, [3, 1, 4, 1, 5, 9, 2, 6, 5, 3])
    assert stats.outcome_of_trend(flat, +1) == "inconclusive"
    assert stats.outcome_of_trend(stats.trend([1, 2], [2, 1]), +1) == "inconclusive"


def test_failure_rates():
    r = stats.failure_rates(["ok", "collapsed", "ok", "diverged"])
    assert r["runs"] == 4 and r["collapsed"] == 1 and r["collapsed_rate"] == 0.25


# The four interval formatters that stats.brief replaced, verbatim (grad_norm._iv,
# mnist_models._pct, weight_pca._pct, flatness_common.iv): observations' text must not change.
def _old_grad_norm(values, fmt: str = ".3g") -> str:
    iv = stats.interval(values)
    if iv.n < stats.MIN_SEEDS:
        return f"{iv.median:{fmt}} (no interval)"
    return f"{iv.median:{fmt}} [{iv.lo:{fmt}}, {iv.hi:{fmt}}]"


def _old_mnist_models(values) -> str:
    iv = stats.interval(values)
    if iv.n < stats.MIN_SEEDS:
        return f"{100 * iv.median:.2f} (no interval)"
    return f"{100 * iv.median:.2f} [{100 * iv.lo:.2f}, {100 * iv.hi:.2f}]"


def _old_weight_pca(values, digits: int = 2, scale: float = 100, kind: str = "f") -> str:
    iv, f = stats.interval(values), f".{digits}{kind}"
    if iv.n < stats.MIN_SEEDS:
        return f"{scale * iv.median:{f}} (no interval)"
    return f"{scale * iv.median:{f}} [{scale * iv.lo:{f}}, {scale * iv.hi:{f}}]"


def _old_flatness(values, fmt: str = ".3g", scale: float = 1.0) -> str:
    i = stats.interval(values)
    if i.n == 0:
        return "n/a"
    if not np.isfinite(i.lo):
        return f"{i.median * scale:{fmt}} (1 seed)"
    return f"{i.median * scale:{fmt}} [{i.lo * scale:{fmt}}, {i.hi * scale:{fmt}}]"


SAMPLES = [DATA, [0.5], [], [math.nan], [math.nan, 0.25, math.inf], [0.3, 0.3, 0.3],
           [1.0, 2.0, 3.0], [1e-5, 3e-4, 2e-3, 7e-2], [120.0, 3.5e4, 9.9e5], [-0.02, 0.01],
           np.array([0.9712, 0.9688]), [0.123456789] * 2 + [0.1234]]


@pytest.mark.parametrize("values", SAMPLES)
def test_brief_matches_the_old_formatters(values):
    from dlscope.experiments import flatness_common

    none = not np.isfinite(np.asarray(values, dtype=float)).any()  # old: "nan (...)"; now words

    def old(text):
        return "no finished runs" if none else text

    for fmt in (".3g", ".0f", ".2f", ".2g"):
        assert stats.brief(values, fmt) == old(_old_grad_norm(values, fmt))
    assert stats.brief(values, ".2f", 100) == old(_old_mnist_models(values))
    for digits, scale, kind in ((2, 100, "f"), (1, 100, "f"), (3, 1, "g")):
        assert (stats.brief(values, f".{digits}{kind}", scale)
                == old(_old_weight_pca(values, digits, scale, kind)))
    for fmt, scale in ((".3g", 1.0), (".0f", 1.0), (".2f", 100)):
        assert flatness_common.iv(values, fmt, scale) == _old_flatness(values, fmt, scale)
        assert (stats.brief(values, fmt, scale, few="(1 seed)", empty="n/a")
                == _old_flatness(values, fmt, scale))


def test_brief_texts():
    assert stats.brief([1.0, 2.0, 3.0]) == "2 [-0.484, 4.48]"
    assert stats.brief([0.5], ".2f", 100) == "50.00 (no interval)"
    assert stats.brief([]) == "no finished runs"
    assert stats.brief([], empty="n/a") == "n/a"
