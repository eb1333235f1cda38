"""Pearson-correlation similarity between embeddings (Group Loss++ eq. 3, §3.4.1)."""
from __future__ import annotations

from typing import Literal, Optional, Tuple

import torch

from .. import _validation as v
from ._closed_form_backward import row_map_function
from .rms_normalize import row_power_of_two, zero_overflowing_rows

#: dtypes whose rows are standardised in float32
HALF_DTYPES = (torch.float16, torch.bfloat16)

Negatives = Literal["clamp", "shift"]
NEGATIVE_MODES = ("clamp", "shift")


def standardize_rows(x: torch.Tensor) -> torch.Tensor:
    """Centre each row by its own mean and scale it to unit L2 norm.

    Args:
        x: ``(n, d)``.

    Returns:
        ``(n, d)``, computed in float32 for float16/bfloat16 ``x`` (a rounding-level floor in
        their own precision would call rows of offset 8 and spread 1 constant). Finite rows
        with (numerically) zero variance become all-zero rows instead of 0/0, and their
        gradient is zero, not NaN; so do rows too small for a finite gradient (it grows as
        1 / the row's spread): largest magnitude subnormal in ``x``'s dtype, or within
        ~``1 / eps`` of the smallest normal (float32: below ~1e-31; see
        :func:`~pml_grouploss.functional.rms_normalize.zero_overflowing_rows`). A row holding
        NaN or inf becomes all NaN (never hidden as a constant row): its correlations are
        NaN, so a k-NN or a loss sees it.

    The backward pass is the closed form ``P (g - z (z . g)) / (||c|| s)`` (``P`` the
    centring, ``c`` the centred row, ``s`` its scale): a handful of passes instead of
    autograd's ~15 over ``(n, d)`` (``create_graph=True`` differentiates the formula above
    with autograd instead).
    """
    v.check_rows("x", x)
    if x.dtype in HALF_DTYPES:
        return _StandardizeRows.apply(widen_rows(x, torch.float32)).to(x.dtype)
    return _StandardizeRows.apply(x)


def widen_rows(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` ``(n, d)`` in the wider ``dtype``, its rows whose largest magnitude is subnormal in
    ``x``'s own dtype set to 0 (zero rows of the correlation: their gradient, ~1/scale, would
    overflow once cast back to ``x``'s dtype)."""
    if x.dtype == dtype:
        return x
    small = x.detach().abs().amax(dim=1, keepdim=True) < torch.finfo(x.dtype).tiny
    return x.masked_fill(small, 0.0).to(dtype)


def _standardize(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(z, 1 / ||c||)`` of :func:`standardize_rows` (0 for constant rows), ``c`` the centred
    row of ``x``."""
    # Correlation is invariant to the scale of each row: divide by a power of two near the
    # row's largest magnitude (exact; a constant, so the gradient is unchanged) to keep squares
    # away from overflow/underflow.
    power = row_power_of_two(x)
    z, inverse_norm = standardize_scaled(x / power)
    return zero_overflowing_rows(z, inverse_norm / power, power)


def standardize_scaled(xs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(z, 1 / ||c||)`` for rows already divided by
    :func:`~pml_grouploss.functional.rms_normalize.row_power_of_two` (largest magnitude in
    ``[1, 2)``)."""
    centred = xs - xs.mean(dim=1, keepdim=True)
    norm = torch.linalg.vector_norm(centred, dim=1, keepdim=True)
    # A row is "constant" when its centred norm is at rounding level (rows now have max |x| in
    # [1, 2)): dividing such residue by its own norm would turn rounding noise into a unit
    # vector. NaN/inf rows (norm NaN, not <= floor) are kept: NaN propagates instead of
    # becoming a constant row. Constant rows divide by 1, then get 0 (autograd of this sees
    # no 0 * inf).
    floor = 16 * torch.finfo(xs.dtype).eps * (xs.shape[1] ** 0.5)
    constant = norm <= floor
    inverse_norm = torch.reciprocal(norm.masked_fill(constant, 1.0)).masked_fill(constant, 0.0)
    return centred * inverse_norm, inverse_norm


def _standardize_backward(z: torch.Tensor, factor: torch.Tensor, grad: torch.Tensor):
    along = (z * grad).sum(dim=1, keepdim=True)
    centred = torch.addcmul(grad, z, along, value=-1).mul_(factor)
    return centred - centred.mean(dim=1, keepdim=True)


# Hand-written backward: per-call work dominates GroupLoss at small batches (issue 10).
_StandardizeRows = row_map_function(_standardize, _standardize_backward, "_StandardizeRows")


def gram(z: torch.Tensor) -> torch.Tensor:
    """``z z^T`` ``(n, n)`` of ``z`` ``(n, d)``, with the symmetric backward ``(G + G^T) z``
    (one product instead of autograd's two)."""
    return _Gram.apply(z)


class _Gram(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(z)
        return z @ z.transpose(0, 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (z,) = ctx.saved_tensors  # differentiable as written: no create_graph special case
        grad = grad.to(z.dtype)  # under autocast the product ran in lower precision
        return (grad + grad.transpose(0, 1)) @ z


def pearson_correlation(
    query: torch.Tensor, reference: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Raw Pearson correlation between the rows of ``query`` and ``reference``.

    Each embedding is standardised over its own feature dimension (not across the batch),
    which makes the measure invariant to scaling and translation of each embedding
    (Group Loss++ eq. 3). A finite row with zero variance correlates 0 with everything; a row
    holding NaN or inf correlates NaN with everything (itself included).

    Args:
        query: ``(n, d)`` embeddings.
        reference: ``(r, d)`` embeddings, or ``None`` for ``query`` itself.

    Returns:
        ``(n, r)`` correlations in ``[-1, 1]``, in ``query``'s dtype (computed in float32 for
        float16/bfloat16, outside autocast).
    """
    v.check_rows("query", query)
    if reference is not None:
        v.check_rows("reference", reference)
        v.check_same_width("query", query, "reference", reference)
        if reference.dtype != query.dtype:
            raise TypeError(
                f"query and reference must have one dtype, got {query.dtype} and "
                f"{reference.dtype}; convert one with .to(other.dtype)"
            )
    if query.dtype in HALF_DTYPES or torch.is_autocast_enabled(query.device.type):
        dtype = torch.promote_types(query.dtype, torch.float32)  # float64 stays float64
        with torch.autocast(query.device.type, enabled=False):
            wide = None if reference is None else widen_rows(reference, dtype)
            return pearson_correlation(widen_rows(query, dtype), wide).to(query.dtype)
    q = standardize_rows(query)
    if reference is None:
        return gram(q)
    return q @ standardize_rows(reference).transpose(0, 1)


def similarity_from_correlation(
    corr: torch.Tensor,
    negatives: Negatives = "clamp",
    zero_diagonal: bool = False,
) -> torch.Tensor:
    """Turn a square similarity matrix into the ``W`` of the replicator dynamics.

    The diagonal is set to exactly 1 (self-similarity; its gradient is 0 for a
    correlation), then negative entries are handled by ``negatives`` (GL++ §3.4.1):

    - ``"clamp"``: ``max(W, 0)`` (ReLU), the papers' and the authors' choice;
    - ``"shift"``: ``W - min(0, min(W))``, every entry moved up by the largest negative value
      (the alternative GL++ rejects: CUB R@1 51 vs 65.5 with clamping).

    An empty ``(0, 0)`` matrix gives the empty ``W`` with either mode.

    Raw negative values are not offered: the replicator dynamics then leave the simplex
    (negative "probabilities", NaN logs).

    ``zero_diagonal=False`` keeps ``W_ii = 1`` (shifted: ``1 + |min|``) as the authors' code
    does (self-support); ``True`` sets ``W_ii = 0`` as ECCV'20 eq. 1 / GL++ eq. 3 state (a
    sample with no positive similarity then has an all-zero support row;
    :func:`~pml_grouploss.functional.replicator_step` leaves such rows unchanged).

    Args:
        corr: ``(n, n)`` similarities (e.g. :func:`pearson_correlation`).
        negatives: ``"clamp"`` or ``"shift"``.
        zero_diagonal: set ``W_ii = 0`` instead of keeping self-similarity.

    Returns:
        ``(n, n)`` matrix, same dtype and device as ``corr``.
    """
    if negatives not in NEGATIVE_MODES:
        raise ValueError(
            f"negatives must be one of {NEGATIVE_MODES}, got {negatives!r}"
        )
    zero_diagonal = v.check_bool("zero_diagonal", zero_diagonal)
    if corr.dim() != 2 or corr.shape[0] != corr.shape[1]:
        raise ValueError(f"corr must be a square (n, n) matrix, got {tuple(corr.shape)}")
    eye = torch.eye(corr.shape[0], dtype=torch.bool, device=corr.device)
    corr = corr.masked_fill(eye, 1.0)
    if negatives == "clamp":
        W = torch.relu(corr)
    elif corr.numel():
        W = corr - torch.clamp(corr.min(), max=0.0)
    else:  # n = 0: no minimum to shift by
        W = corr
    if zero_diagonal:
        W = W.masked_fill(eye, 0.0)
    return W


def pearson_similarity(
    embeddings: torch.Tensor,
    negatives: Negatives = "clamp",
    zero_diagonal: bool = False,
) -> torch.Tensor:
    """Similarity matrix ``W`` of a batch for the replicator dynamics (GL++ eq. 3, §3.4.1).

    ``W_ij = corr(x_i, x_j)``: each embedding standardised over its own features (not
    across the batch), as the authors' code does; then
    :func:`similarity_from_correlation` (negatives ``"clamp"``/``"shift"``,
    diagonal kept at 1 or zeroed). A zero-variance embedding correlates 0 with every other
    sample (finite values and gradients, unlike the reference's 0/0).

    Args:
        embeddings: ``(n, d)``.
        negatives: ``"clamp"`` or ``"shift"``.
        zero_diagonal: set ``W_ii = 0`` instead of 1.

    Returns:
        ``(n, n)`` symmetric similarity matrix, same dtype and device as ``embeddings``.
    """
    if embeddings.dim() != 2:
        raise ValueError(
            f"embeddings must be 2-D (batch_size, embedding_size), got shape "
            f"{tuple(embeddings.shape)}"
        )
    return similarity_from_correlation(
        pearson_correlation(embeddings), negatives=negatives, zero_diagonal=zero_diagonal
    )
