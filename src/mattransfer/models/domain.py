"""A model's training domain, kept in its checkpoint, and how far new structures lie outside it.

Three checks at prediction time, each cheap and each a reason to distrust a number:

- **elements** the training structures never contained (the model has only an untrained or
  pre-training embedding for them);
- a **prediction outside the training targets' range** (a regression head extrapolates poorly);
- a structure **far from the training set in latent space**: its distance to the nearest training
  latent vector is above the 99th percentile of the training vectors' own nearest-neighbour
  distances (leave-one-out), i.e. farther than 99 % of training structures are from each other.

The checkpoint keeps plain types and tensors only: element numbers, the target range, up to
`MAX_REFERENCE` training latent vectors (a seeded sample) and the distance threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

MAX_REFERENCE = 2000  # (2000, 64) float32: 0.5 MB in the checkpoint; all-pairs distances stay cheap
PERCENTILE = 99.0


@dataclass
class Domain:
    elements: list[int]  # atomic numbers present in the training structures
    target_min: float
    target_max: float
    reference: Tensor  # (m, d) float32 latent vectors of (a sample of) the training structures
    distance_threshold: float  # PERCENTILE-th percentile of the reference's nearest-neighbour distances
    n_train: int

    @classmethod
    def fit(cls, latent: Tensor, elements: set[int], y_train: np.ndarray, seed: int = 0) -> Domain:
        """The domain of training structures with latent vectors ``latent`` and targets ``y_train``."""
        latent = latent.detach().float().cpu()
        if len(latent) > MAX_REFERENCE:
            keep = torch.randperm(len(latent), generator=torch.Generator().manual_seed(seed))[:MAX_REFERENCE]
            latent = latent[keep]
        distances = torch.cdist(latent, latent)
        distances.fill_diagonal_(float("inf"))  # leave-one-out: a vector is not its own neighbour
        nearest = distances.min(dim=1).values
        finite = nearest[torch.isfinite(nearest)]
        threshold = float(np.percentile(finite.numpy(), PERCENTILE)) if len(finite) else float("inf")
        return cls(sorted(int(z) for z in elements), float(np.min(y_train)), float(np.max(y_train)),
                   latent.contiguous(), threshold, int(len(y_train)))

    def assess(self, latent: Tensor, elements: list[set[int]], predictions: np.ndarray) -> dict[str, list]:
        """Per structure: unseen elements (symbols), prediction outside the target range, distance to
        the nearest training vector relative to the threshold, and whether any check failed."""
        from pymatgen.core.periodic_table import Element

        known = set(self.elements)
        unseen = [" ".join(Element.from_Z(z).symbol for z in sorted(e - known)) for e in elements]
        outside = [bool(p < self.target_min or p > self.target_max) for p in predictions]
        nearest = torch.cdist(latent.detach().float().cpu(), self.reference).min(dim=1).values.numpy()
        relative = nearest / self.distance_threshold if self.distance_threshold > 0 else np.full(len(nearest), np.inf)
        far = [bool(r > 1) for r in relative]
        return {
            "unseen_elements": unseen,
            "outside_target_range": outside,
            "latent_distance": [float(r) for r in relative],
            "far_from_training": far,
            "out_of_domain": [bool(u) or o or f for u, o, f in zip(unseen, outside, far)],
        }

    def to_checkpoint(self) -> dict[str, Any]:
        return {"elements": list(self.elements), "target_min": self.target_min, "target_max": self.target_max,
                "reference": self.reference, "distance_threshold": self.distance_threshold,
                "percentile": PERCENTILE, "n_train": self.n_train}

    @classmethod
    def from_checkpoint(cls, raw: dict[str, Any]) -> Domain:
        return cls([int(z) for z in raw["elements"]], float(raw["target_min"]), float(raw["target_max"]),
                   raw["reference"].float(), float(raw["distance_threshold"]), int(raw["n_train"]))


def summary_line(assessment: dict[str, list], domain: Domain, unit: str) -> str:
    """One line for the user: how many predictions leave the training domain, and why."""
    n = len(assessment["out_of_domain"])
    flagged = sum(assessment["out_of_domain"])
    if not flagged:
        return f"all {n} structures inside the training domain (elements, target range, latent distance)"
    parts = []
    unseen = sorted({s for e in assessment["unseen_elements"] for s in e.split()})
    if unseen:
        parts.append(f"{sum(map(bool, assessment['unseen_elements']))} with elements absent from training ({', '.join(unseen)})")
    if any(assessment["outside_target_range"]):
        parts.append(f"{sum(assessment['outside_target_range'])} predicted outside the training range"
                     f" [{domain.target_min:.4g}, {domain.target_max:.4g}] {unit}")
    if any(assessment["far_from_training"]):
        parts.append(f"{sum(assessment['far_from_training'])} far from the training set in latent space"
                     f" (nearest-neighbour distance above the training {PERCENTILE:.0f}th percentile)")
    return f"warning: {flagged} of {n} structures outside the training domain: " + "; ".join(parts)
