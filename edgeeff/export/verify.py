"""Verification of an artifact against the float model, run in the artifact's own runtime."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgeeff.runtime import open_runner

# Max |Δlogit| allowed between an FP32 artifact and eager PyTorch, per unit of logit scale:
# the bound is FP32_TOLERANCE × max(1, max |logit|), because float32 rounding error grows with the
# magnitude of the values summed (untrained models with warmed BatchNorm reach logits of 20–30).
FP32_TOLERANCE = 1e-4

# When the float32 reference is itself inexact: how far an artifact may sit from the float64
# logits, as a multiple of eager float32's own distance from them. Runtimes sum in other orders
# (GEMM tiling, other conv algorithms), so they land a small multiple of eager's rounding error
# away: 1.5x (onnxruntime) and 2.1x (LiteRT, ExecuTorch) on untrained B6 at 264 px.
FLOAT64_ERROR_FACTOR = 4.0


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
                    fp32_tolerance: float = FP32_TOLERANCE, threads: int | None = None,
                    float64_reference: Callable[[], np.ndarray] | None = None) -> dict:
    """Run held-out images through the artifact and compare with the float model's logits.

    FP32 artifacts pass when max |Δlogit| <= `fp32_tolerance` × max(1, max |reference logit|).
    A deep untrained model can amplify float32 rounding until eager PyTorch itself is that far
    from exact (untrained B6 at 264 px with BatchNorm warmed on 8 photos: logits near 1100, eager
    float32 0.63 from float64). So when the first bound fails and `float64_reference` is given,
    it is called for the same logits in float64, and the artifact passes when it is no further
    from them than `FLOAT64_ERROR_FACTOR` times eager float32's distance (or the first bound).
    INT8 artifacts pass when their outputs are finite and of the right shape; their agreement
    numbers are reported, and the accuracy gate (`edgeeff check`) decides whether they are good enough.
    """
    runner = open_runner(path, threads)
    logits = runner.run_many(holdout.astype(np.float32))
    if logits.shape != reference.shape:
        return {"passed": False, "reason": f"output shape {logits.shape} != float model's {reference.shape}"}
    if not np.isfinite(logits).all():
        return {"passed": False, "reason": "artifact produced NaN or Inf logits"}
    result = compare_logits(logits, reference)
    if precision != "fp32":
        result["passed"] = True
        return result
    bound = fp32_tolerance * max(1.0, float(np.abs(reference).max()))
    result["tolerance"] = bound
    result["passed"] = result["max_abs_logit_diff"] <= bound
    if not result["passed"] and float64_reference is not None:
        exact = np.asarray(float64_reference(), dtype=np.float64)
        eager_error = float(np.abs(reference.astype(np.float64) - exact).max())
        artifact_error = float(np.abs(logits.astype(np.float64) - exact).max())
        exact_bound = max(bound, FLOAT64_ERROR_FACTOR * eager_error)
        result["float64_check"] = {"eager_float32_error": eager_error, "artifact_error": artifact_error,
                                   "tolerance": exact_bound}
        result["passed"] = artifact_error <= exact_bound
        if not result["passed"]:
            result["reason"] = (f"max |Δlogit| {artifact_error:.2e} from the float64 model exceeds {exact_bound:.1e} "
                                f"({FLOAT64_ERROR_FACTOR:g} × eager float32's {eager_error:.1e}, "
                                f"or {fp32_tolerance:.0e} × logit scale)")
        return result
    if not result["passed"]:
        result["reason"] = (f"max |Δlogit| {result['max_abs_logit_diff']:.2e} exceeds {bound:.1e} "
                            f"({fp32_tolerance:.0e} × logit scale)")
    return result
