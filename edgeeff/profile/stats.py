"""Summary statistics of latency samples, and the standard error of their median."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

# 95 % two-sided normal quantile, for the order-statistic confidence interval of the median.
Z_95 = 1.959964


def median_interval(sorted_ms: np.ndarray) -> tuple[float, float]:
    """Return a distribution-free 95 % confidence interval of the median.

    The ranks n/2 ± z·√n/2 come from the normal approximation to the binomial distribution of
    how many samples fall below the true median. Latency samples are skewed, with rare slow
    outliers, so this interval is used instead of one built on the standard deviation.
    """
    n = len(sorted_ms)
    half_width = Z_95 * math.sqrt(n) / 2
    low = max(0, int(math.floor(n / 2 - half_width)))
    high = min(n - 1, int(math.ceil(n / 2 + half_width)) - 1)
    return float(sorted_ms[low]), float(sorted_ms[max(high, low)])


def relative_standard_error(samples_ms: Sequence[float]) -> float:
    """Return the standard error of the median over the median, from the interval above."""
    values = np.sort(np.asarray(samples_ms, dtype=np.float64))
    if len(values) < 2:
        return math.inf
    low, high = median_interval(values)
    median = float(np.median(values))
    if median <= 0:
        return math.inf
    return (high - low) / (2 * Z_95) / median


def summarize(samples_ms: Sequence[float]) -> dict:
    """Summarize timed runs: min, median, p90, p95, p99, max, mean, std and the median's RSE."""
    values = np.sort(np.asarray(samples_ms, dtype=np.float64))
    if len(values) == 0:
        raise ValueError("no timed runs to summarize: pass --runs 1 or more")
    low, high = median_interval(values)
    rse = relative_standard_error(values)
    return {
        "runs": int(len(values)),
        "min_ms": float(values[0]),
        "median_ms": float(np.median(values)),
        "p90_ms": float(np.percentile(values, 90)),
        "p95_ms": float(np.percentile(values, 95)),
        "p99_ms": float(np.percentile(values, 99)),
        "max_ms": float(values[-1]),
        "mean_ms": float(values.mean()),
        "std_ms": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        "rse": None if math.isinf(rse) else float(rse),
        "median_ci_low_ms": low,
        "median_ci_high_ms": high,
    }
