"""Ensembles by concatenation (Group Loss ECCV'20 Table 2; GL++ appendix, Table 9)."""

from __future__ import annotations

from typing import Sequence

import torch

from .._validation import check_bool
from ..functional.beta_normalization import beta_normalize


class EmbeddingEnsemble(torch.nn.Module):
    """Concatenate the embeddings of independently trained models.

    ``forward(x) = cat([m(x) for m in models], dim=1)``: "we simply train independently k
    networks and then concatenate their features during inference" (GL++ appendix). An
    ensemble of one model returns that model's output unchanged.

    Args:
        models: the models (a sequence, ``nn.ModuleList`` or ``nn.ModuleDict``; one
            ``nn.Module`` is an ensemble of one), each ``(B, ...) -> (B, d_i)``; output
            ``(B, sum d_i)``.
        normalize_each: L2-normalise each member's embedding before concatenating (gives every
            member the same weight when their norms differ): ``beta_normalize(e, beta=0)``,
            ``F.normalize``'s values, finite for zero rows in float16 too.
    """

    def __init__(self, models: Sequence[torch.nn.Module], normalize_each: bool = False):
        super().__init__()
        if isinstance(models, torch.nn.ModuleDict):
            models = models.values()
        if isinstance(models, torch.nn.ModuleList) or not isinstance(models, torch.nn.Module):
            models = list(models)
        else:  # one model (an nn.Sequential is one model: a chain)
            models = [models]
        if len(models) == 0:
            raise ValueError("models must contain at least one nn.Module")
        for i, m in enumerate(models):
            if not isinstance(m, torch.nn.Module):
                raise TypeError(f"models[{i}] must be an nn.Module, got {type(m).__name__}")
        self.models = torch.nn.ModuleList(models)
        self.normalize_each = check_bool("normalize_each", normalize_each)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for m in self.models:
            e = m(x)
            if e.dim() != 2:
                raise ValueError(
                    f"every member must return (B, d) embeddings, got shape {tuple(e.shape)}"
                )
            outs.append(beta_normalize(e, beta=0.0) if self.normalize_each else e)
        if len(outs) == 1:
            return outs[0]
        return torch.cat(outs, dim=1)
