"""Verification of an artifact against the float model, run in the artifact's own runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeeff.runtime import open_runner

# Max |Δlogit| allowed between an FP32 artifact and eager PyTorch, per unit of logit scale:
# the bound is FP32_TOLERANCE × max(1, max |logit|), because float32 rounding error grows with the
# magnitude of the values summed (untrained models with warmed BatchNorm reach logits of 20–30).
FP32_TOLERANCE = 1e-4


def compare_logits(logits: np.ndarray, reference: np.ndarray) -> dict:
    """Return agreement numbers between two (N, classes) logit arrays."""
    diff = np.abs(logits.astype(np.float64) - reference.astype(np.float64))
    dot = (logits * reference).sum(1)
    norms = np.linalg.norm(logits, axis=1) * np.linalg.norm(reference, axis=1)
    cosine = dot / np.maximum(norms, 1e-12)
    top1 = logits.argmax(1) == reference.argmax(1)
    k = min(5, reference.shape[1])
    ref_top5 = np.argsort(-reference, axis=1)[:, :k]
    top1_in_ref_top5 = np.array([logits[i].argmax() in ref_top5[i] for i in range(len(logits))])
    return {
        "images": int(len(logits)),
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        "mean_cosine": float(cosine.mean()),
        "min_cosine": float(cosine.min()),
        "top1_agreement": float(top1.mean()),
        "top1_in_float_top5": float(top1_in_ref_top5.mean()),
    }


def verify_artifact(path: str | Path, holdout: np.ndarray, reference: np.ndarray, precision: str,
                    fp32_tolerance: float = FP32_TOLERANCE, threads: int | None = None) -> dict:
    """Run held-out images through the artifact and compare with the float model's logits.

    FP32 artifacts pass when max |Δlogit| <= `fp32_tolerance` × max(1, max |reference logit|). INT8 artifacts pass when their
    outputs are finite and of the right shape; their agreement numbers are reported, and the
    accuracy gate (`edgeeff check`) decides whether they are good enough.
    """
    runner = open_runner(path, threads)
    logits = runner.run_many(holdout.astype(np.float32))
    if logits.shape != reference.shape:
        return {"passed": False, "reason": f"output shape {logits.shape} != float model's {reference.shape}"}
    if not np.isfinite(logits).all():
        return {"passed": False, "reason": "artifact produced NaN or Inf logits"}
    result = compare_logits(logits, reference)
    if precision == "fp32":
        bound = fp32_tolerance * max(1.0, float(np.abs(reference).max()))
        result["tolerance"] = bound
        result["passed"] = result["max_abs_logit_diff"] <= bound
        if not result["passed"]:
            result["reason"] = (f"max |Δlogit| {result['max_abs_logit_diff']:.2e} exceeds {bound:.1e} "
                                f"({fp32_tolerance:.0e} × logit scale)")
    else:
        result["passed"] = True
    return result
