"""The measuring loop: cheapest points first, fit, predict, then measure around the budget.

`run_selection` does not export or open devices: it calls `measure(candidate)` for a
latency and `lookup(candidate)` for a stored one, so tests can drive it with synthetic data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from edgeeff.select.candidates import Candidate, MeasuredPoint
from edgeeff.select.decide import (NONE_FITS, Decision, decide, mark_frontier, no_fit_message, plan_measurements,
                                   prediction_band, suggestions)
from edgeeff.select.latency_model import MIN_POINTS_FOR_ERROR, LatencyFit, fit_latency, leave_one_out

METRICS = ("median", "p90", "p99")
DEFAULT_FIT_POINTS = 3
DEFAULT_MAX_FIT_ERROR = 0.15


@dataclass
class SelectionSettings:
    """Selection settings: the budget and metric, and how far the latency model is trusted.

    `fit_points` cheapest candidates (by MACs) are always measured. With `measure_all`, every
    candidate is measured and nothing is left to prediction.
    """

    budget_ms: float
    metric: str = "p90"
    max_fit_error: float = DEFAULT_MAX_FIT_ERROR
    fit_points: int = DEFAULT_FIT_POINTS
    measure_all: bool = False
    by_accuracy: bool = False

    def __post_init__(self):
        if not (self.budget_ms > 0 and np.isfinite(self.budget_ms)):
            raise ValueError(f"invalid budget {self.budget_ms:g} ms: pass --budget-ms with a positive number "
                             "such as 25")
        if self.metric not in METRICS:
            raise ValueError(f"invalid metric {self.metric!r}: use one of {', '.join(METRICS)}")
        if not self.max_fit_error > 0:
            raise ValueError(f"invalid --max-fit-error {self.max_fit_error:g}: use a positive fraction such as 0.15")
        if self.fit_points < 2:
            raise ValueError(f"invalid --fit-points {self.fit_points}: a fit needs at least 2 points")


@dataclass
class Selection:
    """A finished selection: candidates with their measured or predicted latency, the fit and the decision."""

    candidates: list[Candidate]
    settings: SelectionSettings
    fit: LatencyFit | None
    decision: Decision
    steps: list[dict] = field(default_factory=list)

    def counts(self) -> dict:
        measured = [c for c in self.candidates if c.measured is not None]
        return {"candidates": len(self.candidates),
                "measured_now": sum(1 for c in measured if c.measured.source == "measured"),
                "stored": sum(1 for c in measured if c.measured.source == "stored"),
                "predicted": len(self.candidates) - len(measured)}


@dataclass
class DeviceContext:
    """The device and settings behind the measurements, for the hints when no candidate fits."""

    name: str = "this device"
    precision: str = "fp32"
    threads: int | None = None
    cores: int | None = None


Measure = Callable[[Candidate], MeasuredPoint]
Lookup = Callable[[Candidate], "MeasuredPoint | None"]


def refit(candidates: list[Candidate], metric: str) -> LatencyFit | None:
    """Fit the measured points and set every candidate's `predicted_ms`.

    Measured points get their leave-one-out prediction (None below three points); the others
    get the fit's prediction.
    """
    measured = [c for c in candidates if c.measured is not None]
    fit = fit_latency([c.macs for c in measured], [c.measured.metric(metric) for c in measured]) if measured else None
    if fit is not None and len(measured) >= MIN_POINTS_FOR_ERROR:
        loo = leave_one_out(fit.kind, np.array([c.macs for c in measured], dtype=np.float64),
                            np.array([c.measured.metric(metric) for c in measured], dtype=np.float64))
    else:
        loo = [None] * len(measured)
    for candidate, prediction in zip(measured, loo):
        candidate.predicted_ms = prediction
    for candidate in candidates:
        if candidate.measured is None:
            candidate.predicted_ms = fit.predict(candidate.macs) if fit is not None else None
    return fit


def run_selection(candidates: list[Candidate], settings: SelectionSettings, measure: Measure,
                  lookup: Lookup | None = None, on_event: Callable[[dict], None] | None = None,
                  device: DeviceContext | None = None) -> Selection:
    """Measure as few candidates as the decision needs, then decide.

    First, stored measurements are reused (`lookup`). Then the `fit_points` cheapest candidates
    are measured, and more cheap ones while no fit exists (latency that does not grow with
    MACs). After that, each refit is followed by measuring the cheapest candidate that
    `plan_measurements` returns, until it returns none. With `measure_all` every candidate is measured, cheapest first.
    `device` names the device and its settings in the message and hints when no candidate fits.
    """
    device = device or DeviceContext()
    metric = settings.metric
    steps: list[dict] = []

    def emit(event: dict) -> None:
        steps.append(event)
        if on_event:
            on_event(event)

    if lookup is not None:
        for candidate in candidates:
            point = lookup(candidate)
            if point is not None and point.metric(metric) is not None:
                candidate.measured = point
                emit({"event": "stored", "candidate": candidate.label, "latency_ms": point.metric(metric)})

    def take(candidate: Candidate, reason: str) -> None:
        before = candidate.predicted_ms
        emit({"event": "measure", "candidate": candidate.label, "reason": reason, "predicted_ms": before})
        point = measure(candidate)
        value = point.metric(metric)
        if value is None:
            raise ValueError(f"the measurement of {candidate.label} has no {metric} (its tool reports only some "
                             "percentiles); pass --metric median")
        candidate.measured = point
        candidate.predicted_before_ms = before
        emit({"event": "measured", "candidate": candidate.label, "latency_ms": value, "predicted_ms": before})

    by_cost = sorted(candidates, key=lambda c: c.macs)
    seeds = by_cost if settings.measure_all else by_cost[:settings.fit_points]
    for candidate in seeds:
        if candidate.measured is None:
            refit(candidates, metric)
            take(candidate, "all candidates" if settings.measure_all else "cheapest points for the fit")

    while True:
        fit = refit(candidates, metric)
        unmeasured = [c for c in by_cost if c.measured is None]
        if fit is None and unmeasured:
            # Nothing can be predicted yet, so measure the next cheapest point rather than a large model.
            take(unmeasured[0], "no latency fit yet")
            continue
        needed = plan_measurements(candidates, metric, settings.budget_ms, fit, settings.max_fit_error,
                                   settings.by_accuracy)
        if not needed:
            break
        band = prediction_band(fit, settings.max_fit_error)
        take(min(needed, key=lambda c: c.macs), f"near the budget boundary (prediction band ±{band:.0%})")

    fit = refit(candidates, metric)
    mark_frontier(candidates, metric, settings.by_accuracy)
    decision = decide(candidates, metric, settings.budget_ms, fit, settings.max_fit_error, settings.by_accuracy)
    selection = Selection(candidates=candidates, settings=settings, fit=fit, decision=decision, steps=steps)
    if decision.status == NONE_FITS:
        decision.reason = no_fit_message(candidates, metric, settings.budget_ms, device.name)
        decision.suggestions = suggestions(candidates, metric, settings.budget_ms, fit, device.precision,
                                           device.threads, device.cores)
    return selection
