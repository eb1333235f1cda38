"""Group Loss++ inference strategies (GL++ §4) as PML-native parts.

Each strategy works alone or combined, for any trained PML model:

- :class:`BetaNormalization` / ``functional.beta_normalize`` (eq. 12);
- :class:`FlipInference` (§4.5);
- :class:`MixedPooling` and :func:`install_mixed_pooling` (eq. 13);
- :func:`install_leaky_relu` (§4.3);
- :class:`EmbeddingEnsemble` (ECCV'20 Table 2);
- :class:`KReciprocalReRanker` (sparse ``knn_func``, §4.4; the dense reference function is
  :func:`pml_grouploss.functional.re_ranking`);
- :class:`GroupLossPlusPlusTester` (flip + beta inside ``GlobalEmbeddingSpaceTester``).

:data:`TABLE7_PRESETS` holds the per-dataset hyper-parameters of GL++ Table 7.
"""

from .backbone_surgery import DEFAULT_NEGATIVE_SLOPE, install_leaky_relu, install_mixed_pooling
from .beta_normalization import BetaNormalization
from .ensemble import EmbeddingEnsemble
from .flip_inference import FlipInference
from .mixed_pooling import MixedPooling
from .reranking import KReciprocalReRanker
from .tester import GroupLossPlusPlusTester

#: GL++ Table 7 (inference hyper-parameters per dataset).
TABLE7_PRESETS = {
    "CUB200": dict(beta=0.004, negative_slope=0.75, alpha=0.5, lambda_value=0.85, k1=50, k2=20),
    "Cars196": dict(beta=0.004, negative_slope=0.4, alpha=0.6, lambda_value=0.9, k1=50, k2=20),
    "InShop": dict(beta=0.002, negative_slope=1.0, alpha=0.9, lambda_value=0.7, k1=4, k2=2),
    "SOP": dict(beta=0.0005, negative_slope=1.0, alpha=0.6, lambda_value=0.94, k1=50, k2=20),
}

__all__ = [
    "BetaNormalization",
    "DEFAULT_NEGATIVE_SLOPE",
    "EmbeddingEnsemble",
    "FlipInference",
    "GroupLossPlusPlusTester",
    "KReciprocalReRanker",
    "MixedPooling",
    "TABLE7_PRESETS",
    "install_leaky_relu",
    "install_mixed_pooling",
]


def __getattr__(name: str):
    """``inference.re_ranking`` (its old place) still resolves, with a DeprecationWarning."""
    if name == "re_ranking":
        import warnings

        from ..functional import re_ranking

        warnings.warn(
            "pml_grouploss.inference.re_ranking moved: use pml_grouploss.functional.re_ranking",
            DeprecationWarning,
            stacklevel=2,
        )
        return re_ranking
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
