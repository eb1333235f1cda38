"""Pearson correlation as a PML distance."""
from __future__ import annotations

from typing import Optional

import torch
from pytorch_metric_learning.distances import BaseDistance

from .. import _validation as v
from ..functional.pearson import gram, standardize_rows, widen_rows


class PearsonCorrelation(BaseDistance):
    """Pearson correlation between embeddings (Group Loss++ eq. 3), a PML similarity.

    Each embedding is centred by its own mean over the feature dimension and scaled to unit
    L2 norm (:func:`pml_grouploss.functional.standardize_rows`); the matrix is then the dot
    product of those rows, in ``[-1, 1]`` up to rounding, larger = more similar
    (``is_inverted=True``).
    Unlike cosine similarity it is invariant to a translation of each embedding as well as
    to scaling. A finite zero-variance embedding correlates 0 with everything (no NaN), and so
    does one whose largest magnitude is subnormal in its dtype or within ~``1/eps`` of its
    smallest normal (float32: below ~1e-31; its gradient, growing as 1/scale, would overflow:
    it gets 0); an embedding holding NaN or inf correlates NaN with
    everything, itself included (propagated, never hidden as a constant row).

    **Sharper similarities: ``power``.** With ``power = p > 1`` the matrix is the *signed*
    power ``sign(c) |c|^p`` of each correlation ``c`` (PML's own ``power`` would compute
    ``c^p``, which is NaN or loses the sign for negative ``c``). It is a strictly increasing
    map of ``c``, so every ranking — PML miners, ``CustomKNN`` neighbours, accuracies — is the
    one of the plain correlation; what changes is the *contrast* between weak and strong
    similarities. In :class:`~pml_grouploss.losses.GroupLoss` (``distance=
    PearsonCorrelation(power=p)``) the replicator dynamics' matrix becomes ``W = relu(c)^p``
    (``negatives="clamp"``, diagonal 1): since the dynamics ``X <- Q^-1 (X ⊙ W X)`` are
    unchanged by a scaling of ``W``, a temperature (dividing ``W`` by a constant) would do
    nothing; a power is what sharpens. Powers below 1 are refused: the gradient
    ``p |c|^(p-1)`` is infinite at ``c = 0`` (every zero-variance embedding, every orthogonal
    pair), and they flatten the similarities instead of sharpening them. For ``p >= 1`` the
    gradient is finite everywhere (0 at ``c = 0`` for ``p > 1``); ``power=1`` (default) is the
    plain correlation, bit for bit (rounding may leave an entry an ulp above 1). With
    ``p > 1`` ``|c|`` is clamped to 1 first, so the matrix lies in ``[-1, 1]`` for any finite
    ``p`` (``1.0000001 ** 2**40`` was ``+inf``); entries within ``[-1, 1]`` are unchanged.

    Usable wherever PML takes a distance: losses (``ContrastiveLoss(pos_margin=1,
    neg_margin=0, distance=PearsonCorrelation())``: a similarity needs PML's similarity margins,
    with the defaults 0 and 1 no negative pair is ever penalised), miners,
    ``CustomKNN(PearsonCorrelation())`` for ``AccuracyCalculator``. It is the default similarity of
    :class:`pml_grouploss.losses.GroupLoss`.

    The standardisation is what the distance is, so ``normalize_embeddings`` cannot be
    turned off, ``p`` other than its default is rejected, and so is ``is_inverted=False`` (a
    correlation is a similarity).

    Args:
        power: exponent ``>= 1`` of the signed power ``sign(c) |c|^power`` (default 1.0: the
            correlation itself). Recorded by record-keeper as PML's ``power``.
        **kwargs: PML's ``collect_stats``.
    """

    def __init__(self, power: float = 1.0, **kwargs):
        for name, default in (("normalize_embeddings", True), ("p", 2), ("is_inverted", True)):
            if kwargs.get(name, default) != default:
                raise ValueError(
                    f"PearsonCorrelation does not support {name}={kwargs[name]!r}: the "
                    "correlation standardises each embedding itself; remove the argument"
                )
        power = v.check_number(
            "power", power, minimum=1,
            hint="powers below 1 have an infinite gradient at correlation 0 and flatten "
            "the similarities; use power >= 1 (1 = the plain correlation)",
        )
        kwargs.update(normalize_embeddings=True, is_inverted=True, power=power)
        super().__init__(**kwargs)

    def check_shapes(self, query_emb: torch.Tensor, ref_emb: Optional[torch.Tensor]) -> None:
        """PML's check (2-D), then floating point and one embedding size for both."""
        super().check_shapes(query_emb, ref_emb)
        v.check_floating("query_emb", query_emb)
        if ref_emb is not None:
            v.check_floating("ref_emb", ref_emb)
            v.check_same_width("query_emb", query_emb, "ref_emb", ref_emb)

    def forward(self, query_emb: torch.Tensor, ref_emb: Optional[torch.Tensor] = None
                ) -> torch.Tensor:
        """``(n, r)`` matrix ``sign(c) |c|^power`` of the correlations ``c`` between the rows
        of ``query_emb`` ``(n, d)`` and ``ref_emb`` ``(r, d)`` (``None``: ``query_emb``).

        PML's ``BaseDistance.forward`` (stats, shape checks, normalisation) with the power
        applied with its sign instead of PML's plain ``mat ** power``. Float16/bfloat16
        embeddings are standardised and multiplied in float32 and the matrix is returned in
        their dtype (in their own precision the rounding would leave entries above 1); a query
        and a reference of different dtypes in their promotion, returned in it.
        """
        out = _common_dtype(query_emb, ref_emb)
        wide = None if out is None else torch.promote_types(out, torch.float32)
        if wide is not None and (query_emb.dtype != wide or ref_emb is not None and
                                 ref_emb.dtype != wide):
            # half precision in float32, mixed dtypes in their promotion (a matmul of two
            # dtypes fails inside torch); returned in the promotion of the inputs' dtypes
            ref = None if ref_emb is None else widen_rows(ref_emb, wide)
            return self.forward(widen_rows(query_emb, wide), ref).to(out)
        if self.power == 1:
            return super().forward(query_emb, ref_emb)
        power, self.power = self.power, 1  # PML's forward must not apply its own power
        try:
            correlation = super().forward(query_emb, ref_emb)
        finally:
            self.power = power
        return self._signed_power(correlation)

    def normalize(self, embeddings: torch.Tensor, dim: int = 1, **kwargs) -> torch.Tensor:
        if dim != 1:
            raise ValueError(f"PearsonCorrelation standardises rows (dim=1), got dim={dim}")
        return standardize_rows(embeddings)

    def get_norm(self, embeddings: torch.Tensor, dim: int = 1, **kwargs) -> torch.Tensor:
        # The norm of the centred embedding: what the correlation divides by.
        centred = embeddings - embeddings.mean(dim=dim, keepdim=True)
        return torch.linalg.vector_norm(centred, dim=dim, **kwargs)

    def compute_mat(self, query_emb: torch.Tensor, ref_emb: torch.Tensor) -> torch.Tensor:
        if query_emb is ref_emb:  # a batch against itself: the symmetric backward
            return gram(query_emb)
        return query_emb @ ref_emb.transpose(0, 1)

    def pairwise_distance(self, query_emb: torch.Tensor, ref_emb: torch.Tensor) -> torch.Tensor:
        """``(n,)`` ``sign(c) |c|^power`` of the correlation of each row pair of two ``(n, d)``
        inputs: the diagonal of :meth:`forward`'s matrix. The rows are standardised here
        (idempotent on rows from :meth:`normalize`): PML's ``MatchFinder.is_match`` passes raw
        embeddings, ``InferenceModel`` L2-normalised ones. Float16/bfloat16 and mixed dtypes
        are correlated as in :meth:`forward`."""
        for name, x in (("query_emb", query_emb), ("ref_emb", ref_emb)):
            v.check_floating(name, x)
        if query_emb.dim() != 2 or query_emb.shape != ref_emb.shape:
            raise ValueError(
                f"pairwise_distance compares row i of query_emb with row i of ref_emb: both "
                f"must be (n, d) of one shape, got {tuple(query_emb.shape)} and "
                f"{tuple(ref_emb.shape)}; use forward (the (n, r) matrix) for all pairs"
            )
        out = _common_dtype(query_emb, ref_emb)
        wide = torch.promote_types(out, torch.float32)
        q, r = widen_rows(query_emb, wide), widen_rows(ref_emb, wide)
        correlation = torch.sum(self.normalize(q) * self.normalize(r), dim=1)
        return self._signed_power(correlation).to(out)

    def _signed_power(self, correlation: torch.Tensor) -> torch.Tensor:
        if self.power == 1:
            return correlation
        # sign * |c|^p: its gradient p |c|^(p-1) is 0 at c = 0 for p > 1 (c * |c|^(p-1)
        # would give 0 * inf = NaN there for p < 2); |c| clamped to 1: rounding leaves
        # entries such as 1.0000001, whose huge powers overflowed
        return torch.sign(correlation) * correlation.abs().clamp(max=1.0).pow(self.power)


def _common_dtype(query_emb: torch.Tensor, ref_emb: Optional[torch.Tensor]
                  ) -> Optional[torch.dtype]:
    """The promoted dtype of two floating inputs (``None`` if one is not floating: the shape
    checks name it)."""
    tensors = (query_emb,) if ref_emb is None else (query_emb, ref_emb)
    if not all(torch.is_tensor(x) and x.is_floating_point() for x in tensors):
        return None
    return query_emb.dtype if ref_emb is None else torch.promote_types(
        query_emb.dtype, ref_emb.dtype)
