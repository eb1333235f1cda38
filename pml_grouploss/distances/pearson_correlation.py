"""Pearson correlation as a PML distance."""
from __future__ import annotations

import torch
from pytorch_metric_learning.distances import BaseDistance

from ..functional.pearson import standardize_rows


class PearsonCorrelation(BaseDistance):
    """Pearson correlation between embeddings (Group Loss++ eq. 3), a PML similarity.

    Each embedding is centred by its own mean over the feature dimension and scaled to unit
    L2 norm (:func:`pml_grouploss.functional.standardize_rows`); the matrix is then the dot
    product of those rows, in ``[-1, 1]``, larger = more similar (``is_inverted=True``).
    Unlike cosine similarity it is invariant to a translation of each embedding as well as
    to scaling. A finite zero-variance embedding correlates 0 with everything (no NaN); an
    embedding holding NaN or inf correlates NaN with everything, itself included (propagated,
    never hidden as a constant row).

    Usable wherever PML takes a distance: losses (``ContrastiveLoss(distance=
    PearsonCorrelation())``), miners, ``CustomKNN(PearsonCorrelation())`` for
    ``AccuracyCalculator``. It is the default similarity of
    :class:`pml_grouploss.losses.GroupLoss`.

    The standardisation is what the distance is, so ``normalize_embeddings`` cannot be
    turned off, and ``p``/``power`` other than their defaults are rejected.
    """

    def __init__(self, **kwargs):
        for name, default in (("normalize_embeddings", True), ("p", 2), ("power", 1)):
            if kwargs.get(name, default) != default:
                raise ValueError(
                    f"PearsonCorrelation does not support {name}={kwargs[name]!r}: the "
                    "correlation standardises each embedding itself; remove the argument"
                )
        kwargs.update(normalize_embeddings=True, is_inverted=True)
        super().__init__(**kwargs)

    def normalize(self, embeddings: torch.Tensor, dim: int = 1, **kwargs) -> torch.Tensor:
        if dim != 1:
            raise ValueError(f"PearsonCorrelation standardises rows (dim=1), got dim={dim}")
        return standardize_rows(embeddings)

    def get_norm(self, embeddings: torch.Tensor, dim: int = 1, **kwargs) -> torch.Tensor:
        # The norm of the centred embedding: what the correlation divides by.
        centred = embeddings - embeddings.mean(dim=dim, keepdim=True)
        return torch.linalg.vector_norm(centred, dim=dim, **kwargs)

    def compute_mat(self, query_emb: torch.Tensor, ref_emb: torch.Tensor) -> torch.Tensor:
        return query_emb @ ref_emb.transpose(0, 1)

    def pairwise_distance(self, query_emb: torch.Tensor, ref_emb: torch.Tensor) -> torch.Tensor:
        return torch.sum(query_emb * ref_emb, dim=1)
