"""beta-normalization of embeddings (Group Loss++ §4.1, eq. 12)."""

from __future__ import annotations

import torch

from .._validation import check_floating, check_int, check_number

#: GL++ Table 7: beta per dataset (CUB 0.004, Cars196 0.004, In-Shop 0.002, SOP 0.0005).
DEFAULT_BETA = 0.004


def check_beta(beta: float) -> float:
    """Validate ``beta`` (a finite float >= 0) and return it as a float."""
    return check_number("beta", beta, minimum=0.0, hint="beta=0 is L2 normalization")


def check_dim(dim: int, embeddings: torch.Tensor) -> int:
    """``dim`` an int indexing a dimension of ``embeddings``."""
    dim = check_int("dim", dim)
    if not -embeddings.dim() <= dim < max(embeddings.dim(), 1):
        raise ValueError(
            f"dim={dim} is not a dimension of embeddings of shape {tuple(embeddings.shape)}; "
            "use the feature dimension (1 for (n, d) embeddings)"
        )
    return dim


def beta_normalize(
    embeddings: torch.Tensor, beta: float = DEFAULT_BETA, dim: int = 1, eps: float = 1e-12
) -> torch.Tensor:
    """``phi_beta = phi / ||phi||_2 + beta * phi`` (GL++ eq. 12).

    ``beta = 0`` is exactly ``torch.nn.functional.normalize`` (L2 normalization); a large
    ``beta`` keeps the length information of the raw embedding. A zero embedding stays zero
    (the L2 part uses ``max(||phi||, eps)`` like ``F.normalize``) and its gradient is
    ``beta`` times the incoming one (the L2 part contributes 0 there, not ``F.normalize``'s
    ``1 / eps``), so outputs and gradients stay finite in every floating dtype: the result is
    computed in ``promote_types(dtype, float32)`` (``eps = 1e-12`` is 0 in float16, which made
    a zero row ``0 / 0``) and cast back. A float16/bfloat16 row whose largest magnitude is
    subnormal in its dtype is treated as a zero row in the L2 part (output ``beta * phi``,
    gradient ``beta`` times the incoming one): its L2 gradient, ~``1 / ||phi||``, overflowed
    float16 once cast back (as :func:`~pml_grouploss.functional.standardize_rows` zeroes such
    rows; :class:`~pml_grouploss.losses.GroupLoss` rejects them).

    Args:
        embeddings: ``(n, d)`` floating point (any shape; normalised along ``dim``).
        beta: weight of the raw embedding, >= 0. Default 0.004 (GL++ Table 7, CUB/Cars196).
        dim: feature dimension.
        eps: lower bound of the norm, ``> 0``.

    Returns:
        Tensor of the same shape, dtype and device as ``embeddings``.
    """
    beta = check_beta(beta)
    check_number("eps", eps, minimum=0, strict_minimum=True, hint="the default is 1e-12")
    check_floating("embeddings", embeddings)
    dim = check_dim(dim, embeddings)
    x = embeddings.to(torch.promote_types(embeddings.dtype, torch.float32))
    if not x.numel():
        return embeddings.clone()
    top = x.detach().abs().amax(dim=dim, keepdim=True)
    x_l2 = x
    if x.dtype != embeddings.dtype:  # half precision: rows subnormal in it as zero rows
        x_l2 = x.masked_fill(top < torch.finfo(embeddings.dtype).tiny, 0.0)
    if x.requires_grad:
        zero = (x_l2 == 0).all(dim=dim, keepdim=True)
        x_l2 = torch.where(zero, x_l2.detach(), x_l2)
    # F.normalize on rows divided by a power of two at their largest magnitude (exact, and
    # the quotient is F.normalize's to the bit), with eps scaled alike: the squares of rows of
    # magnitude 1e20 overflow float32 and F.normalize alone returns zeros for them.
    _, exponent = torch.frexp(top)
    scale = torch.ldexp(torch.ones_like(exponent, dtype=x.dtype), exponent - 1)
    scaled = x_l2 / scale
    norm = torch.linalg.vector_norm(scaled, dim=dim, keepdim=True)
    out = scaled / torch.maximum(norm, eps / scale)
    if beta != 0.0:
        out = out + beta * x
    return out.to(embeddings.dtype)
