"""The decision: which candidate to ship, why, and what else is on the latency frontier.

Candidates are ranked by φ (then resolution, then MACs), or by accuracy when an accuracy source
covers them. The choice is the highest-ranked candidate whose measured latency is within the
budget: a prediction alone never makes the choice. Higher-ranked candidates that were not
measured are over budget by prediction, so a choice is refused while the fit error exceeds the
limit and such candidates remain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from edgeeff.select.candidates import Candidate
from edgeeff.select.latency_model import LatencyFit

CHOSEN = "chosen"
NONE_FITS = "none_fits"
REFUSED = "refused"
EXIT_CODES = {CHOSEN: 0, NONE_FITS: 3, REFUSED: 4}
# Run-to-run noise of a latency measurement; a prediction closer to the budget than this is measured.
MIN_BAND = 0.05
RECORD_SCHEMA = 1


@dataclass
class Decision:
    """The outcome: chosen, none_fits or refused, the choice, the reason and what would fit instead.

    `relies_on` lists the candidates whose place over the budget is predicted, not measured.
    """

    status: str
    choice: Candidate | None
    reason: str
    relies_on: list[str] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]


def rank_key(candidate: Candidate, by_accuracy: bool) -> tuple:
    """Order candidates from least to most preferred."""
    if by_accuracy:
        return (candidate.accuracy, -candidate.macs)
    return (candidate.variant.phi, candidate.resolution, candidate.macs)


def ranked(candidates: list[Candidate], by_accuracy: bool) -> list[Candidate]:
    """Return the candidates that can be chosen, least preferred first.

    Ranking by accuracy leaves out candidates that the accuracy source does not cover.
    """
    pool = [c for c in candidates if not by_accuracy or c.accuracy is not None]
    return sorted(pool, key=lambda c: rank_key(c, by_accuracy))


def prediction_band(fit: LatencyFit | None, max_fit_error: float) -> float:
    """Return the relative margin around a prediction inside which a candidate must be measured.

    It is the fit error, at least MIN_BAND and at most `max_fit_error`; the error limit also
    applies when the error is unknown.
    """
    if fit is None or fit.error is None:
        return max_fit_error
    return min(max(fit.error, MIN_BAND), max_fit_error)


def _within(candidate: Candidate, metric: str, budget_ms: float, band: float) -> bool:
    """Return whether a candidate is, or could be, within budget: measured, else by its lowest plausible latency."""
    if candidate.measured is not None:
        return candidate.measured.metric(metric) <= budget_ms
    if candidate.predicted_ms is None:
        return True
    return lowest_plausible(candidate.predicted_ms, band) <= budget_ms


def lowest_plausible(predicted_ms: float, error: float) -> float:
    """Return the lowest latency consistent with a prediction whose relative error is at most `error`.

    The error is |predicted − actual| / actual, so the actual latency is at least predicted / (1 + error).
    """
    return predicted_ms / (1 + error)


def plan_measurements(candidates: list[Candidate], metric: str, budget_ms: float, fit: LatencyFit | None,
                      max_fit_error: float, by_accuracy: bool) -> list[Candidate]:
    """Return the unmeasured candidates the decision needs next (empty when it can be made).

    Needed are the contenders: unmeasured candidates ranked above the best measured one within
    budget that could be within budget given the prediction band. The highest of them is the
    tentative choice. Also needed is the next candidate above the tentative choice, which
    confirms where the budget boundary lies. The caller measures the cheapest first and refits.
    """
    order = ranked(candidates, by_accuracy)
    band = prediction_band(fit, max_fit_error)
    possible = [index for index, c in enumerate(order) if _within(c, metric, budget_ms, band)]
    measured_within = [index for index in possible if order[index].measured is not None]
    best_measured = measured_within[-1] if measured_within else -1
    needed = [order[index] for index in possible if index > best_measured]
    if possible:
        above = order[possible[-1] + 1:]
    else:
        above = order
    if above and above[0].measured is None:
        needed.append(above[0])
    return needed


def decide(candidates: list[Candidate], metric: str, budget_ms: float, fit: LatencyFit | None,
           max_fit_error: float, by_accuracy: bool) -> Decision:
    """Make the decision from the measured points, checking the predicted ones against the fit error."""
    order = ranked(candidates, by_accuracy)
    within = [c for c in order if c.measured is not None and c.measured.metric(metric) <= budget_ms]
    choice = within[-1] if within else None
    above = order[order.index(choice) + 1:] if choice else order
    unmeasured = [c for c in above if c.measured is None]
    error = fit.error if fit else None

    if unmeasured and (error is None or error > max_fit_error):
        refusal = refusal_reason(choice, unmeasured, metric, budget_ms, fit, max_fit_error)
        if refusal:
            return Decision(REFUSED, None, refusal, relies_on=[c.label for c in unmeasured])
    if choice is None:
        return Decision(NONE_FITS, None, "", relies_on=[c.label for c in unmeasured])
    return Decision(CHOSEN, choice, choice_reason(choice, above, metric, budget_ms, fit, by_accuracy),
                    relies_on=[c.label for c in unmeasured])


def refusal_reason(choice: Candidate | None, unmeasured: list[Candidate], metric: str, budget_ms: float,
                   fit: LatencyFit | None, max_fit_error: float) -> str | None:
    """Explain why an untrusted fit cannot settle the decision, or return None when it can.

    A choice is refused whenever a higher-ranked candidate was only predicted over budget.
    "Nothing fits" is still reported when every unmeasured candidate stays over budget even at
    the observed fit error. That claim needs only the larger models to be about as slow as
    predicted, not the fine order near the budget.
    """
    error = fit.error if fit else None
    if error is not None:
        error_text = f"{error:.0%}"
    elif fit is None or fit.points < 3:
        error_text = "unknown (fewer than 3 measured points)"
    else:
        error_text = "unknown (a leave-one-out fit failed)"
    if choice is None:
        at_risk = [c for c in unmeasured
                   if error is None or c.predicted_ms is None or lowest_plausible(c.predicted_ms, error) <= budget_ms]
        if not at_risk:
            return None
        return (f"fit error {error_text} exceeds --max-fit-error {max_fit_error:.0%}, and within that error "
                f"{', '.join(c.label for c in at_risk)} could be within the {budget_ms:g} ms budget but were not "
                "measured; rerun with --measure-all to measure them, or raise --max-fit-error")
    return (f"fit error {error_text} exceeds --max-fit-error {max_fit_error:.0%}, so the predictions that put "
            f"{', '.join(c.label for c in unmeasured)} over budget cannot be trusted; the best measured candidate "
            f"within budget is {choice.label} ({metric} {choice.measured.metric(metric):.2f} ms); rerun with "
            "--measure-all to measure the rest, or raise --max-fit-error")


def choice_reason(choice: Candidate, above: list[Candidate], metric: str, budget_ms: float,
                  fit: LatencyFit | None, by_accuracy: bool) -> str:
    """Explain a choice: its measured latency, the next candidate's, and the predicted rest."""
    value = choice.measured.metric(metric)
    if by_accuracy:
        parts = [f"{choice.label} has the highest accuracy ({choice.accuracy:.1%}, {choice.accuracy_source}) of the "
                 f"candidates within budget: {metric} {value:.2f} ms measured, budget {budget_ms:g} ms"]
    else:
        parts = [f"{choice.label} (φ {choice.variant.phi:g}) is the largest candidate whose {metric} is within "
                 f"budget: {value:.2f} ms measured, budget {budget_ms:g} ms"]
    if above:
        following = above[0]
        word = "more accurate" if by_accuracy else "larger"
        if following.measured is not None:
            parts.append(f"the next {word}, {following.label}, measured {following.measured.metric(metric):.2f} ms")
        predicted = [c for c in above if c.measured is None]
        if predicted:
            lowest = min(c.predicted_ms for c in predicted if c.predicted_ms is not None)
            error = "unknown" if fit is None or fit.error is None else f"{fit.error:.0%}"
            parts.append(f"{', '.join(c.label for c in predicted)} are predicted over budget "
                         f"(from {lowest:.1f} ms, fit error {error})")
    else:
        parts.append("it is the largest candidate" if not by_accuracy else "it is the most accurate candidate")
    return "; ".join(parts)


def no_fit_message(candidates: list[Candidate], metric: str, budget_ms: float, device: str) -> str:
    """Name the fastest measured candidate when nothing meets the budget."""
    measured = [c for c in candidates if c.measured is not None]
    fastest = min(measured, key=lambda c: c.measured.metric(metric))
    return (f"no candidate meets {metric} <= {budget_ms:g} ms on {device}: the fastest measured is {fastest.label} "
            f"with {metric} {fastest.measured.metric(metric):.2f} ms")


def suggestions(candidates: list[Candidate], metric: str, budget_ms: float, fit: LatencyFit | None,
                precision: str, threads: int | None, cores: int | None) -> list[str]:
    """Say what could meet the budget when no candidate does: lower resolution, INT8, more threads."""
    measured = [c for c in candidates if c.measured is not None]
    fastest = min(measured, key=lambda c: c.measured.metric(metric))
    tips = [_resolution_tip(fastest, metric, budget_ms, fit)]
    if precision != "int8":
        tips.append("INT8: rerun with --int8; full-integer models run faster than FP32 on most CPUs")
    if cores and (threads is None or threads < cores):
        used = "the runtime's default thread count" if threads is None else f"{threads} thread(s)"
        tips.append(f"more threads: rerun with --threads {cores} (the device has {cores} cores; "
                    f"these measurements used {used})")
    return tips


def _resolution_tip(fastest: Candidate, metric: str, budget_ms: float, fit: LatencyFit | None) -> str:
    if fit is None:
        return "lower resolution: rerun with --resolutions and sizes below the native ones, e.g. 0.5x"
    # Convolution MACs scale with the input area, so MACs(r) ≈ MACs(r0)·(r/r0)².
    target_macs = fit.macs_for(budget_ms)
    if target_macs is None or target_macs <= 0:
        if fit.kind == "linear":
            return (f"lower resolution will not reach it: the fit's fixed cost alone is "
                    f"{fit.coefficients['t0_ms']:.2f} ms per inference")
        return "lower resolution will not reach it by the fit"
    size = fastest.resolution * math.sqrt(target_macs / fastest.macs)
    size = int(size // 8) * 8
    if size < 32:
        return (f"lower resolution will not reach it: {fastest.name} would need under 32 px "
                f"(fit: {fit.describe()})")
    estimate = fit.predict(fastest.macs * (size / fastest.resolution) ** 2)
    return (f"lower resolution: {fastest.name} at about {size} px, estimated {estimate:.2f} ms by the fit "
            f"(rerun with --models {fastest.name} --resolutions {size})")


def mark_frontier(candidates: list[Candidate], metric: str, by_accuracy: bool) -> None:
    """Flag the candidates that no other candidate beats: ranked at least as high and faster."""
    pool = ranked(candidates, by_accuracy)
    for candidate in candidates:
        candidate.on_frontier = False
    for candidate in pool:
        latency = candidate.latency(metric)
        if latency is None:
            continue
        key = rank_key(candidate, by_accuracy)
        candidate.on_frontier = not any(
            other is not candidate and other.latency(metric) is not None
            and rank_key(other, by_accuracy) >= key and other.latency(metric) < latency
            for other in pool)


def decision_record(selection, context: dict) -> dict:
    """Build the JSON decision record: inputs, fit, every candidate and the decision."""
    settings = selection.settings
    decision = selection.decision
    choice = decision.choice
    return {
        "schema": RECORD_SCHEMA,
        **context,
        "budget_ms": settings.budget_ms,
        "metric": settings.metric,
        "ranking": "accuracy" if settings.by_accuracy else "phi",
        "max_fit_error": settings.max_fit_error,
        "fit_points": settings.fit_points,
        "measure_all": settings.measure_all,
        "fit": selection.fit.to_dict() if selection.fit else None,
        "decision": {
            "status": decision.status,
            "exit_code": decision.exit_code,
            "choice": choice.to_dict(settings.metric, settings.budget_ms) if choice else None,
            "reason": decision.reason,
            "relies_on_prediction": decision.relies_on,
            "suggestions": decision.suggestions,
        },
        "candidates": [c.to_dict(settings.metric, settings.budget_ms) for c in selection.candidates],
        "steps": selection.steps,
        "counts": selection.counts(),
    }
