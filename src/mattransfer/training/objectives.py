"""Losses trained beside the target's: an objective is passed to `fit`, which adds it to the training loss.

Structure-biased pre-training (Part 4) adds a Bravais-lattice classifier on the encoder's latent
vector: the encoder is pushed to keep what the lattice type says about a crystal. Validation, and so
early stopping, stays on the target alone.
"""

from __future__ import annotations

from torch import Tensor, nn

from mattransfer.models.head import HeadConfig, MLPHead


class AuxiliaryClassification(nn.Module):
    """``weight`` × the cross-entropy of a classifier head on the latent vector.

    ``labels`` holds a class per row of the input store (-1: none, e.g. where spglib failed); a batch's
    rows index it. The head is the objective's own and is not saved with the model.
    """

    def __init__(self, labels: Tensor, n_classes: int, weight: float, latent_dim: int, head: HeadConfig) -> None:
        super().__init__()
        self.weight = weight
        self.head = MLPHead(latent_dim, head, out_dim=n_classes)
        self.register_buffer("labels", labels.long())

    def forward(self, latent: Tensor, rows: Tensor) -> Tensor:
        labels = self.labels[rows]
        labelled = labels >= 0
        if not labelled.any():
            return latent.new_zeros(())
        return self.weight * nn.functional.cross_entropy(self.head(latent[labelled]), labels[labelled])

    def param_group(self, lr: float) -> dict:
        return {"name": "objective", "params": list(self.parameters()), "lr": lr}
