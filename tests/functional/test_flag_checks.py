"""Boolean flags of the functional API are checked: ``bool("False")`` is ``True``, so a string
silently meant the opposite (``zero_diagonal="False"`` zeroed the diagonal)."""
import numpy as np
import pytest
import torch

import pml_grouploss.functional as F

_X = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
_LABELS = torch.arange(6) // 2
_E = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
_D = np.abs(np.random.default_rng(1).standard_normal((3, 3)))

CALLS = {
    "zero_diagonal": [
        lambda flag: F.pearson_similarity(_X, "clamp", zero_diagonal=flag),
        lambda flag: F.similarity_from_correlation(torch.eye(3), "shift", zero_diagonal=flag),
        lambda flag: F.group_loss(_X, _X[:, :3], _LABELS, F.select_anchors(_LABELS, 1),
                                  temperature=1.0, num_iterations=1, zero_diagonal=flag),
    ],
    "pad": [lambda flag: F.batch_classes(_LABELS, pad=flag)],
    "sparse": [lambda flag: F.gather_rows(torch.randn(4, 3), torch.tensor([0]), flag)],
    "normalize_embeddings": [lambda flag: F.class_centroids(_X, _LABELS, flag)],
    "ref_includes_query": [
        lambda flag: F.dense_re_ranking_knn(_E, 2, _E, flag, k1=3, k2=2),
        lambda flag: F.sparse_re_ranking_knn(_E, 2, _E, flag, k1=3, k2=2),
    ],
    "return_intermediates": [
        lambda flag: F.re_ranking(_D, _D, _D, 2, 1, return_intermediates=flag)],
    "squared": [lambda flag: F.re_ranking_one_set(_D, k1=2, k2=1, squared=flag)],
}
CASES = [(name, i) for name, calls in CALLS.items() for i in range(len(calls))]


@pytest.mark.parametrize("bad", ["False", None, 1, torch.tensor([True, False])],
                         ids=["str", "None", "int", "tensor"])
@pytest.mark.parametrize("name,i", CASES, ids=[f"{n}-{i}" for n, i in CASES])
def test_non_bool_flag_names_the_argument(name, i, bad):
    with pytest.raises(TypeError, match=f"{name} must be True or False"):
        CALLS[name][i](bad)


@pytest.mark.parametrize("name,i", CASES, ids=[f"{n}-{i}" for n, i in CASES])
def test_bools_accepted(name, i):
    CALLS[name][i](True)
    CALLS[name][i](False)
    CALLS[name][i](np.True_)  # NumPy 2 names its bool type "bool", NumPy 1 "bool_"
    CALLS[name][i](np.False_)


def test_string_false_no_longer_zeroes_the_diagonal():
    assert F.pearson_similarity(_X, "clamp", zero_diagonal=False).diagonal().tolist() == [1.0] * 6
