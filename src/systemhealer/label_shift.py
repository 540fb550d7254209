"""Label shift: estimate a deployment's class mix and correct probabilities for it.

EM of Saerens, Latinne & Decaestecker (2002) on the model's posteriors over a deployment's
unlabelled reference window. The network is trained with class-balanced loss, so its posteriors
are taken as made under a uniform prior.
"""

from __future__ import annotations

import numpy as np


def estimate_class_mix(
    probabilities: np.ndarray,
    source_prior: np.ndarray | None = None,
    iterations: int = 200,
    tol: float = 1e-6,
) -> np.ndarray:
    """EM estimate of the class mix of the incidents behind ``probabilities``."""
    k = probabilities.shape[1]
    source = (
        np.full(k, 1.0 / k) if source_prior is None else np.asarray(source_prior, dtype=np.float64)
    )
    target = source.copy()
    # Rows that say nothing (NaN, or no mass at all) would turn every share into NaN.
    probabilities = np.asarray(probabilities, dtype=np.float64)
    usable = np.isfinite(probabilities).all(axis=1) & (probabilities.sum(axis=1) > 0)
    probabilities = probabilities[usable]
    if len(probabilities) == 0:
        return target
    for _ in range(iterations):
        weighted = probabilities * (target / source)
        total = weighted.sum(axis=1, keepdims=True)
        # A row whose classes all reached share 0 keeps its own posterior.
        weighted = np.where(total > 0, weighted / np.where(total > 0, total, 1.0), probabilities)
        updated = weighted.mean(axis=0)
        converged = np.abs(updated - target).max() < tol
        target = updated
        if converged:
            break
    return target


def correct_probabilities(
    probabilities: np.ndarray, class_mix: np.ndarray, source_prior: np.ndarray | None = None
) -> np.ndarray:
    """Re-weight posteriors made under ``source_prior`` (default uniform) to ``class_mix``."""
    k = probabilities.shape[1]
    source = (
        np.full(k, 1.0 / k) if source_prior is None else np.asarray(source_prior, dtype=np.float64)
    )
    weighted = probabilities * (np.asarray(class_mix, dtype=np.float64) / source)
    return (weighted / weighted.sum(axis=1, keepdims=True)).astype(probabilities.dtype)


def mix_from_response(mean_probabilities: np.ndarray, response: np.ndarray) -> np.ndarray:
    """The class mix under which the model's average output would be ``mean_probabilities``.

    ``response[:, c]`` is the model's average probability vector over incidents of class c (from
    training), so a deployment mixed as π averages ``response @ π``; π is found by least squares
    on the simplex (a soft form of black-box shift estimation, Lipton et al., 2018). Unlike EM it
    does not trust the model's confidence, only how its outputs are spread per class. Classes
    without a response (absent from training) get share 0.
    """
    from scipy.optimize import nnls

    known = ~np.isnan(response[0])
    # The sum-to-one constraint as a heavily weighted extra equation.
    system = np.vstack([response[:, known], np.full(known.sum(), 10.0)])
    target = np.concatenate([np.asarray(mean_probabilities, dtype=np.float64), [10.0]])
    shares, _ = nnls(system, target)
    mix = np.zeros(response.shape[1])
    mix[known] = shares / shares.sum() if shares.sum() > 0 else 1.0 / known.sum()
    return mix


def class_response(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Column c: the average probability vector over incidents of fault class c (NaN for a
    class without incidents); what :func:`mix_from_response` compares against."""
    k = probabilities.shape[1]
    response = np.full((k, k), np.nan)
    for c in range(k):
        if (labels == c).any():
            response[:, c] = probabilities[labels == c].mean(axis=0)
    return response
