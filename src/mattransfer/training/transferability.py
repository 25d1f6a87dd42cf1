"""Transferability: score pre-trained sources on a target before any fine-tuning.

`logme` is the LogME score of You et al. (ICML 2021, "LogME: Practical Assessment of Pre-trained
Models for Transfer Learning"); `krr_cv` is a second, non-linear score: minus the cross-validated MAE of
RBF kernel ridge on the features (in units of the target's std). `rank_sources` computes the chosen
`SCORES` for each source checkpoint's frozen encoder features on a target's fine-tune subset (train +
val ids of `make_split`, never the test ids).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from mattransfer.config import DataConfig
from mattransfer.data.registry import DataSources
from mattransfer.data.table import PropertyTable
from mattransfer.errors import ConfigError, DataError
from mattransfer.models.model import load_source
from mattransfer.training.baselines import make_model
from mattransfer.training.job import featurize
from mattransfer.training.run import prepare_table


MAX_BETA = 1e8  # noise precision of the standardised target: a noise std under 1e-4 is an exact fit


def logme(features: np.ndarray, y: np.ndarray, max_iter: int = 100, tol: float = 1e-6) -> float:
    """LogME: the maximised log marginal evidence per sample of Bayesian linear regression of ``y`` on ``features``.

    Model: ``w ~ N(0, α⁻¹ I_d)``, ``y | F, w ~ N(F w, β⁻¹ I_n)``, with F (n, d) and y standardised to mean 0,
    std 1 (so scores of different targets are on one scale). The evidence is

        log p(y | α, β) = n/2 log β + d/2 log α − n/2 log 2π − β/2 ‖F m − y‖² − α/2 ‖m‖² − 1/2 log |A|,
        A = α I + β FᵀF,  m = β A⁻¹ Fᵀ y.

    α and β are maximised by the paper's fixed point, with γ = Σᵢ βσᵢ / (α + βσᵢ) (σᵢ the eigenvalues of FᵀF):
    α ← γ / ‖m‖², β ← (n − γ) / ‖F m − y‖². With the SVD F = U S Vᵀ and z = Uᵀ y every quantity is a
    sum over the singular values, so an iteration costs O(min(n, d)) after one SVD. Returns the evidence / n.
    Higher is better; it is comparable between feature sets on the same target, not across targets' sizes.
    NaN where β runs past `MAX_BETA`: with no more samples than features the fit can be exact and the
    evidence then has no maximum.
    """
    F = np.asarray(features, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).ravel()
    if F.ndim != 2 or F.shape[0] != y.shape[0]:
        raise DataError(f"logme: features {F.shape} and targets {y.shape} do not match (need (n, d) and (n,)).")
    n, d = F.shape
    if n < 2 or not np.isfinite(F).all() or not np.isfinite(y).all():
        raise DataError(f"logme: need at least 2 samples and finite values (got n={n}).")
    std = y.std()
    y = (y - y.mean()) / (std if std > 0 else 1.0)
    u, s, _ = np.linalg.svd(F, full_matrices=False)
    sigma = s**2  # eigenvalues of FᵀF (the rest, d − k of them, are 0)
    z = u.T @ y
    z2 = z**2
    outside = max(float(y @ y - z2.sum()), 0.0)  # ‖y‖² outside F's column space: a residual whatever w is
    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        denom = alpha + beta * sigma
        gamma = float((beta * sigma / denom).sum())
        m2 = float((beta**2 * sigma * z2 / denom**2).sum())  # ‖m‖², m = V diag(βsᵢ/(α+βσᵢ)) z
        res2 = float((alpha**2 * z2 / denom**2).sum()) + outside  # ‖F m − y‖²
        new_alpha = gamma / max(m2, 1e-300)
        new_beta = (n - gamma) / max(res2, 1e-300)
        if new_beta > MAX_BETA:  # the features interpolate y (n ≤ d): the evidence grows without bound
            return float("nan")
        # Converged when the ratio α/β (the effective ridge penalty) stops moving, as in the paper.
        done = abs(new_alpha / new_beta - alpha / beta) <= tol * (alpha / beta)
        alpha, beta = new_alpha, new_beta
        if done:
            break
    return evidence(sigma, z2, outside, n, d, alpha, beta) / n


def evidence(sigma: np.ndarray, z2: np.ndarray, outside: float, n: int, d: int, alpha: float, beta: float) -> float:
    """The log evidence above at (α, β), from FᵀF's non-zero eigenvalues ``sigma`` and ``z2`` = (Uᵀy)²."""
    denom = alpha + beta * sigma
    m2 = float((beta**2 * sigma * z2 / denom**2).sum())
    res2 = float((alpha**2 * z2 / denom**2).sum()) + outside
    log_det = float(np.log(denom).sum()) + (d - len(sigma)) * math.log(alpha)
    return (n / 2 * math.log(beta) + d / 2 * math.log(alpha) - n / 2 * math.log(2 * math.pi)
            - beta / 2 * res2 - alpha / 2 * m2 - log_det / 2)


def krr_cv(features: np.ndarray, y: np.ndarray, seed: int = 0) -> float:
    """Minus the 5-fold cross-validated MAE of RBF kernel ridge of ``y`` on ``features``, both standardised,
    at the best (α, γ) of `baselines.KRR_GRID`: higher is better, 0 is perfect, about −0.8 is a constant.
    NaN below 4 samples (no two folds of two)."""
    F = np.asarray(features, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).ravel()
    if F.ndim != 2 or F.shape[0] != y.shape[0]:
        raise DataError(f"krr_cv: features {F.shape} and targets {y.shape} do not match (need (n, d) and (n,)).")
    if len(y) < 4:
        return float("nan")
    model = make_model("krr", seed, len(y)).fit(F, y)
    return float(model[-1][-1].regressor_.best_score_)  # GridSearchCV's mean CV −MAE, standardised target


SCORES = {"logme": logme, "krr_cv": krr_cv}  # name → function(features, y), higher is better


@dataclass(frozen=True)
class SourceScore:
    checkpoint: Path
    pretrained_on: str  # the dataset of the checkpoint's first training (its pre-training)
    scores: dict[str, float]  # by score name, in the order asked
    seconds: float  # graphs + embedding + scores, for this source

    @property
    def logme(self) -> float:
        return self.scores["logme"]


def finetune_subset(data: DataConfig, sources: DataSources, seed: int) -> PropertyTable:
    """The rows a fine-tune on ``data`` with ``seed`` would train and validate on; the test ids are left out."""
    table, split = prepare_table(data, sources, seed)
    return table.subset([*split.train, *split.val])


def rank_sources(data: DataConfig, sources: DataSources, checkpoints: Sequence[Path | str], seed: int = 0,
                 scores: Sequence[str] = ("logme",)) -> list[SourceScore]:
    """``scores`` (`SCORES`) of each checkpoint's (or package model's, by name) frozen encoder features (its own
    pooling) on the target's fine-tune subset, best first by the first score."""
    unknown = [name for name in scores if name not in SCORES]
    if unknown or not scores:
        raise ConfigError(f"unknown transferability scores {unknown}; known: {', '.join(SCORES)}")
    models = [load_source(path) for path in checkpoints]  # a bad path or name fails before any data is read
    subset = finetune_subset(data, sources, seed)
    ranked = []
    for path, model in zip(checkpoints, models):
        start = time.perf_counter()
        latent = model.embed(featurize(model, subset)).cpu().numpy()
        values = {name: SCORES[name](latent, subset.y) for name in scores}
        origin = model.training_data[0]["dataset"] if model.training_data else model.provenance.get("pretrained", "?")
        ranked.append(SourceScore(Path(path), origin, values, time.perf_counter() - start))
    return sorted(ranked, key=lambda s: s.scores[scores[0]], reverse=True)
