"""Flip inference (Group Loss++ §4.5)."""

from __future__ import annotations

from typing import Optional

import torch

from .._validation import check_bool


def flip_average(model, images: torch.Tensor, batched: bool = True) -> torch.Tensor:
    """``(model(x) + model(flip(x))) / 2`` with ``flip`` mirroring the last (width) dimension.

    Args:
        model: callable ``(B, C, H, W) -> (B, d)``.
        images: ``(B, C, H, W)``; any other rank is a ``ValueError`` (a single ``(C, H, W)``
            image would otherwise reach the model as a batch of ``C`` images).
        batched: run image and mirror image as one batch of ``2B`` (faster; identical in eval
            mode, but BatchNorm in train mode would see both halves).
    """
    if not torch.is_tensor(images):
        raise TypeError(
            f"images must be a torch.Tensor (N, C, H, W), got {type(images).__name__}; convert "
            "with torch.as_tensor"
        )
    if images.dim() != 4:
        hint = ("; for one (C, H, W) image add the batch dimension with images.unsqueeze(0)"
                if images.dim() == 3 else "")
        raise ValueError(
            f"images must be a (N, C, H, W) batch (flip inference mirrors images), got shape "
            f"{tuple(images.shape)}{hint}"
        )
    flipped = torch.flip(images, dims=(-1,))
    if batched:
        out = model(torch.cat([images, flipped], dim=0))
        a, b = out[: images.shape[0]], out[images.shape[0] :]
    else:
        a, b = model(images), model(flipped)
    return (a + b) / 2


class FlipInference(torch.nn.Module):
    """Average the embeddings of an image and its horizontal mirror image (GL++ §4.5).

    The result is invariant to horizontal flips. Wraps a trunk (and optionally an embedder)
    for PML's ``InferenceModel``: ``InferenceModel(FlipInference(trunk, embedder))``.

    Args:
        trunk: ``(B, C, H, W) -> (B, f)``.
        embedder: optional ``(B, f) -> (B, d)`` applied to the trunk output.
        batched: see :func:`flip_average`.
    """

    def __init__(
        self,
        trunk: torch.nn.Module,
        embedder: Optional[torch.nn.Module] = None,
        batched: bool = True,
    ):
        super().__init__()
        if not isinstance(trunk, torch.nn.Module):
            raise TypeError(f"trunk must be an nn.Module, got {type(trunk).__name__}")
        self.trunk = trunk
        self.embedder = torch.nn.Identity() if embedder is None else embedder
        self.batched = check_bool("batched", batched)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedder(self.trunk(x))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, d)``."""
        return flip_average(self._embed, images, self.batched)
