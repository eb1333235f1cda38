"""A PML tester with Group Loss++ flip inference and beta-normalization."""

from __future__ import annotations

import re
from typing import Optional

import torch
from pytorch_metric_learning.testers import GlobalEmbeddingSpaceTester
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import inference as pml_inference

from .._validation import check_bool
from ..functional.beta_normalization import beta_normalize, check_beta
from .flip_inference import flip_average


def _token(value: float) -> str:
    """A record-group-safe token for a float: only ``[A-Za-z0-9_]`` (0.004 -> ``0p004``)."""
    s = repr(float(value)).replace("-", "m").replace("+", "").replace(".", "p")
    return re.sub(r"[^A-Za-z0-9_]", "_", s)


class GroupLossPlusPlusTester(GlobalEmbeddingSpaceTester):
    """``GlobalEmbeddingSpaceTester`` with flip inference (GL++ §4.5) and beta-normalization.

    beta-normalization is GL++ eq. 12.

    - ``flip=True``: ``get_embeddings_for_eval`` averages the embeddings of each batch and of
      its horizontal mirror image.
    - ``beta``: ``maybe_normalize`` applies ``phi / ||phi|| + beta * phi`` to the whole split
      instead of L2 normalization (``beta=0`` is L2 normalization). ``None`` keeps PML's
      behaviour (``normalize_embeddings``).

    Re-ranking is selected through the accuracy calculator's ``knn_func``
    (:class:`~pml_grouploss.inference.KReciprocalReRanker`); mixed pooling and leaky-ReLU are
    model surgery (:func:`~pml_grouploss.inference.install_mixed_pooling`,
    :func:`~pml_grouploss.inference.install_leaky_relu`).

    Record-group names only use ``[A-Za-z0-9_]`` (record-keeper's sqlite writer crashes on
    ``.``): e.g. ``..._flip_beta0p004_GroupLossPlusPlusTester_level_0``.

    Args:
        flip: average with the horizontal flip.
        beta: beta of eq. 12 (GL++ Table 7: 0.004 CUB/Cars196, 0.002 In-Shop, 0.0005 SOP), or
            ``None`` for PML's L2 normalization switch.
        **kwargs: passed to ``GlobalEmbeddingSpaceTester``.
    """

    def __init__(self, flip: bool = True, beta: Optional[float] = None, **kwargs):
        self.flip = check_bool("flip", flip)
        self.beta = None if beta is None else check_beta(beta)
        super().__init__(**kwargs)

    def get_embeddings_for_eval(self, trunk_model, embedder_model, input_imgs):
        if not self.flip:
            return super().get_embeddings_for_eval(trunk_model, embedder_model, input_imgs)
        if not torch.is_tensor(input_imgs) or input_imgs.dim() != 4:
            shape = getattr(input_imgs, "shape", type(input_imgs).__name__)
            raise ValueError(
                f"flip=True mirrors (N, C, H, W) image batches, got inputs of shape "
                f"{tuple(shape) if not isinstance(shape, str) else shape}; use "
                "GroupLossPlusPlusTester(flip=False) for other data"
            )
        input_imgs = c_f.to_device(input_imgs, device=self.data_device, dtype=self.dtype)
        parent = super().get_embeddings_for_eval
        return flip_average(
            lambda x: parent(trunk_model, embedder_model, x), input_imgs, batched=False
        )

    def maybe_normalize(self, embeddings: torch.Tensor) -> torch.Tensor:
        if self.beta is None:
            return super().maybe_normalize(embeddings)
        if self.pca:
            embeddings = pml_inference.run_pca(c_f.torch_standard_scaler(embeddings), self.pca)
        return beta_normalize(embeddings, self.beta, dim=1)

    def description_suffixes(self, base_name: str) -> str:
        if self.flip:
            base_name += "_flip"
        if self.beta is not None:
            base_name += "_beta" + _token(self.beta)
        # with beta, normalize_embeddings is not used: no "_normalized" in the name
        normalize, self.normalize_embeddings = self.normalize_embeddings, (
            self.normalize_embeddings and self.beta is None)
        try:
            name = super().description_suffixes(base_name)
        finally:
            self.normalize_embeddings = normalize
        return re.sub(r"[^A-Za-z0-9_]", "_", name)
