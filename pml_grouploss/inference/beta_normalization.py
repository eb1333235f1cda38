"""beta-normalization as an ``nn.Module`` (Group Loss++ §4.1, eq. 12)."""

from __future__ import annotations

import torch

from .._validation import check_int
from ..functional.beta_normalization import DEFAULT_BETA, beta_normalize, check_beta


class BetaNormalization(torch.nn.Module):
    """``phi / ||phi||_2 + beta * phi`` (GL++ eq. 12); ``beta = 0`` is L2 normalization.

    Use it as the last layer of an embedder for ``InferenceModel`` (with
    ``normalize_embeddings=False``, otherwise PML L2-normalises again), or use
    :class:`~pml_grouploss.inference.GroupLossPlusPlusTester` inside PML's testers.

    Args:
        beta: >= 0; GL++ Table 7: 0.004 (CUB, Cars196, default), 0.002 (In-Shop), 0.0005 (SOP).
        dim: feature dimension.
    """

    def __init__(self, beta: float = DEFAULT_BETA, dim: int = 1):
        super().__init__()
        self.beta = check_beta(beta)
        self.dim = check_int("dim", dim)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(n, d) -> (n, d)``."""
        return beta_normalize(embeddings, self.beta, self.dim)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, dim={self.dim}"
