"""Latency as a function of multiply-adds, fitted per device × runtime × precision.

Two forms are fitted to the measured points and the one with the lower leave-one-out error is
kept:

- linear: latency = t0 + MACs / throughput, a fixed per-inference cost plus compute at a
  constant rate; fitted by least squares on relative residuals, so a 1 ms point counts as much
  as a 100 ms one;
- log-log: log latency = a + b · log MACs, a power law that bends where larger models fall out
  of cache or use the cores better.

The fit error is the largest relative error of a leave-one-out prediction: each measured point
is predicted from a fit on the others. It needs at least three points; with two, the fit passes
through both and its error is unknown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

KINDS = ("linear", "loglog")
MIN_POINTS_FOR_ERROR = 3


@dataclass
class LatencyFit:
    """A fitted latency model: the chosen form, its coefficients and its leave-one-out error.

    `error` is None when fewer than three points were measured. `errors` maps each form that
    could be fitted to its error, so a report can show why one was chosen.
    """

    kind: str
    coefficients: dict
    points: int
    error: float | None
    errors: dict = field(default_factory=dict)

    def predict(self, macs: float) -> float:
        """Return the predicted latency in ms of a model with `macs` multiply-adds."""
        return _predict(self.kind, self.coefficients, macs)

    def macs_for(self, latency_ms: float) -> float | None:
        """Return the MACs at which the fit predicts `latency_ms`, or None when no MAC count reaches it."""
        if self.kind == "linear":
            t0, rate = self.coefficients["t0_ms"], self.coefficients["macs_per_ms"]
            return (latency_ms - t0) * rate if latency_ms > t0 else None
        a, b = self.coefficients["a"], self.coefficients["b"]
        if b <= 0 or latency_ms <= 0:
            return None
        return math.exp((math.log(latency_ms) - a) / b)

    def describe(self) -> str:
        """Return the fitted formula with its units, e.g. `0.31 ms + MACs / 41.2 GMAC/s`."""
        if self.kind == "linear":
            gmacs_per_s = self.coefficients["macs_per_ms"] * 1e3 / 1e9
            return f"{self.coefficients['t0_ms']:.2f} ms + MACs / {gmacs_per_s:.1f} GMAC/s"
        scale = math.exp(self.coefficients["a"]) * 1e9 ** self.coefficients["b"]
        return f"{scale:.2f} ms × (GMACs)^{self.coefficients['b']:.2f}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "formula": self.describe(), "coefficients": self.coefficients,
                "points": self.points, "error": self.error, "errors": self.errors}


def _predict(kind: str, coefficients: dict, macs: float) -> float:
    if kind == "linear":
        return coefficients["t0_ms"] + macs / coefficients["macs_per_ms"]
    return math.exp(coefficients["a"] + coefficients["b"] * math.log(macs))


def _fit_linear(macs: np.ndarray, latency: np.ndarray) -> dict | None:
    # Least squares on (t0 + k·m - t) / t, which is linear in t0 and k: rows [1/t, m/t] against 1.
    design = np.stack([1.0 / latency, macs / latency], axis=1)
    (t0, slope), *_ = np.linalg.lstsq(design, np.ones_like(latency), rcond=None)
    if t0 < 0:
        # A negative fixed cost has no physical meaning: refit through the origin.
        ratio = macs / latency
        t0, slope = 0.0, float(ratio.sum() / (ratio ** 2).sum())
    if not slope > 0:
        return None
    return {"t0_ms": float(t0), "macs_per_ms": float(1.0 / slope)}


def _fit_loglog(macs: np.ndarray, latency: np.ndarray) -> dict | None:
    if np.any(macs <= 0) or np.any(latency <= 0):
        return None
    b, a = np.polyfit(np.log(macs), np.log(latency), 1)
    if not b > 0:
        return None  # latency that falls as MACs grow is noise, not a model to extrapolate
    return {"a": float(a), "b": float(b)}


FITTERS = {"linear": _fit_linear, "loglog": _fit_loglog}


def _fit_kind(kind: str, macs: np.ndarray, latency: np.ndarray) -> dict | None:
    if len(np.unique(macs)) < 2:
        return None
    return FITTERS[kind](macs, latency)


def leave_one_out(kind: str, macs: np.ndarray, latency: np.ndarray) -> list[float | None]:
    """Return, for each point, the latency predicted by a `kind` fit on all the other points."""
    predictions: list[float | None] = []
    for index in range(len(macs)):
        keep = np.arange(len(macs)) != index
        coefficients = _fit_kind(kind, macs[keep], latency[keep])
        predictions.append(None if coefficients is None else _predict(kind, coefficients, float(macs[index])))
    return predictions


def _max_relative_error(predictions: list[float | None], latency: np.ndarray) -> float:
    if any(p is None for p in predictions):
        return math.inf
    return float(max(abs(p - t) / t for p, t in zip(predictions, latency)))


def fit_latency(macs: list[float], latency_ms: list[float]) -> LatencyFit | None:
    """Fit both forms to measured (MACs, latency) points; return the better one, or None.

    None means no form could be fitted: fewer than two distinct MAC counts, or latency that
    does not grow with MACs in either form. Without a fit every candidate gets measured.
    """
    macs_array = np.asarray(macs, dtype=np.float64)
    latency_array = np.asarray(latency_ms, dtype=np.float64)
    if len(macs_array) != len(latency_array):
        raise ValueError(f"got {len(macs_array)} MAC counts but {len(latency_array)} latencies")
    fitted = {kind: _fit_kind(kind, macs_array, latency_array) for kind in KINDS}
    fitted = {kind: coefficients for kind, coefficients in fitted.items() if coefficients is not None}
    if not fitted:
        return None
    errors: dict[str, float | None] = {}
    for kind in fitted:
        if len(macs_array) >= MIN_POINTS_FOR_ERROR:
            errors[kind] = _max_relative_error(leave_one_out(kind, macs_array, latency_array), latency_array)
        else:
            errors[kind] = None
    known = {kind: error for kind, error in errors.items() if error is not None}
    if known:
        kind = min(known, key=known.get)
    else:
        # Without an error to compare, prefer the form with a physical reading.
        kind = "linear" if "linear" in fitted else "loglog"
    error = errors[kind]
    if error is not None and math.isinf(error):
        error = None
    clean_errors = {name: (None if value is None or math.isinf(value) else round(value, 4))
                    for name, value in errors.items()}
    return LatencyFit(kind=kind, coefficients=fitted[kind], points=len(macs_array), error=error, errors=clean_errors)
