"""FlipInference, EmbeddingEnsemble, BetaNormalization, MixedPooling modules."""

import pytest
import torch
import torch.nn.functional as F

from pml_grouploss.inference import (
    BetaNormalization,
    EmbeddingEnsemble,
    FlipInference,
    MixedPooling,
)


def _trunk():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(5)
    ).eval()


def test_flip_of_symmetric_input_equals_no_flip():
    trunk = _trunk()
    half = torch.randn(2, 3, 9, 5)
    sym = torch.cat(
        [half, torch.flip(half[..., :4], dims=(-1,))], dim=-1
    )  # width 9, mirror-symmetric
    assert torch.equal(sym, torch.flip(sym, dims=(-1,)))
    with torch.no_grad():
        for batched in (True, False):
            torch.testing.assert_close(FlipInference(trunk, batched=batched)(sym), trunk(sym))


def test_flip_averages_image_and_mirror():
    trunk = _trunk()
    emb = torch.nn.Linear(5, 4)
    x = torch.randn(3, 3, 9, 9)
    with torch.no_grad():
        expected = (emb(trunk(x)) + emb(trunk(torch.flip(x, dims=(-1,))))) / 2
        got = FlipInference(trunk, emb)(x)
        assert (emb(trunk(x)) - expected).abs().max() > 1e-4  # flipping matters here
        torch.testing.assert_close(got, expected)
        # invariant to flipping the input
        torch.testing.assert_close(FlipInference(trunk, emb)(torch.flip(x, dims=(-1,))), got)


def test_flip_bad_input():
    with pytest.raises(TypeError, match="trunk"):
        FlipInference("resnet")


def test_ensemble_of_one_is_the_model():
    m = torch.nn.Linear(4, 3)
    x = torch.randn(5, 4)
    assert torch.equal(EmbeddingEnsemble([m])(x), m(x))


def test_ensemble_concatenates():
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 2)
    x = torch.randn(5, 4)
    out = EmbeddingEnsemble([a, b])(x)
    assert out.shape == (5, 5)
    assert torch.equal(out, torch.cat([a(x), b(x)], dim=1))
    norm = EmbeddingEnsemble([a, b], normalize_each=True)(x)
    assert torch.equal(norm, torch.cat([F.normalize(a(x)), F.normalize(b(x))], dim=1))
    assert len(list(EmbeddingEnsemble([a, b]).parameters())) == 4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_ensemble_normalize_each_keeps_a_zero_member_finite(dtype):
    # F.normalize's eps (1e-12) is 0 in float16: a zero row was 0 / 0
    zero, other = torch.nn.Linear(4, 3).to(dtype), torch.nn.Linear(4, 2).to(dtype)
    torch.nn.init.zeros_(zero.weight)
    torch.nn.init.zeros_(zero.bias)
    x = torch.randn(5, 4, dtype=dtype, requires_grad=True)
    out = EmbeddingEnsemble([zero, other], normalize_each=True)(x)
    assert out.dtype == dtype and torch.equal(out[:, :3], torch.zeros(5, 3, dtype=dtype))
    expected = F.normalize(other(x).float(), dim=1).to(dtype)  # rounded once from float32
    assert torch.equal(out[:, 3:], expected)
    out.float().sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(zero.weight.grad).all()


def test_ensemble_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        EmbeddingEnsemble([])
    with pytest.raises(TypeError, match="models\\[1\\]"):
        EmbeddingEnsemble([torch.nn.Linear(2, 2), "x"])


def test_beta_module():
    x = torch.randn(4, 6) * 20
    assert torch.equal(BetaNormalization(0.0)(x), F.normalize(x))
    torch.testing.assert_close(BetaNormalization(0.01)(x), F.normalize(x) + 0.01 * x)
    with pytest.raises(ValueError, match="beta"):
        BetaNormalization(-1)


def test_mixed_pooling_module_no_state():
    m = MixedPooling(0.6)
    assert len(m.state_dict()) == 0
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(
        m(x), 0.6 * x.amax((2, 3), keepdim=True) + 0.4 * x.mean((2, 3), keepdim=True)
    )


def test_wrappers_inside_pml_inference_model():
    """FlipInference + EmbeddingEnsemble + BetaNormalization as PML InferenceModel's trunk."""
    from pytorch_metric_learning.utils.inference import FaissKNN, InferenceModel

    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten())
    b = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Tanh(), torch.nn.Flatten())
    model = torch.nn.Sequential(FlipInference(EmbeddingEnsemble([a, b])), BetaNormalization(0.05))
    model.eval()
    gallery, query = torch.randn(40, 3, 6, 7), torch.randn(5, 3, 6, 7)

    def by_hand(x):
        with torch.no_grad():
            xf = torch.flip(x, dims=(-1,))
            e = (torch.cat([a(x), b(x)], 1) + torch.cat([a(xf), b(xf)], 1)) / 2
            return F.normalize(e) + 0.05 * e

    im = InferenceModel(
        model,
        normalize_embeddings=False,
        knn_func=FaissKNN(reset_before=False, reset_after=False),
        data_device=torch.device("cpu"),
    )
    torch.testing.assert_close(im.get_embeddings(query), by_hand(query))
    im.train_knn(gallery)
    d, i = im.get_nearest_neighbors(query, k=4)
    expected = torch.cdist(by_hand(query), by_hand(gallery))
    torch.testing.assert_close(i, torch.argsort(expected, dim=1)[:, :4])
    # the embeddings are really beta-normalised (not PML's L2 normalisation)
    assert (by_hand(query).norm(dim=1) - 1).abs().max() > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_wrappers_follow_input_dtype(dtype):
    trunk = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()).to(dtype)
    x = torch.randn(2, 3, 5, 5, dtype=dtype)
    model = torch.nn.Sequential(FlipInference(EmbeddingEnsemble([trunk])), BetaNormalization(0.01))
    assert model(x).dtype == dtype
    assert MixedPooling(0.5)(x).dtype == dtype


@pytest.mark.parametrize("shape", [(3, 9, 9), (9, 9), (1, 1, 3, 9, 9)])
def test_flip_needs_a_4d_batch(shape):
    # a (C, H, W) image used to reach the conv as a batch of C images (confusing channel error)
    trunk = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
    with pytest.raises(ValueError, match=r"^images must be a \(N, C, H, W\) batch"):
        FlipInference(trunk)(torch.randn(*shape))
    if len(shape) == 3:
        with pytest.raises(ValueError, match="unsqueeze"):
            FlipInference(trunk)(torch.randn(*shape))


def test_ensemble_of_a_module_list_or_dict_concatenates_its_members():
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 2)
    x = torch.randn(5, 4)
    expected = torch.cat([a(x), b(x)], dim=1)
    for models in (torch.nn.ModuleList([a, b]), torch.nn.ModuleDict({"a": a, "b": b})):
        assert torch.equal(EmbeddingEnsemble(models)(x), expected)
    chain = torch.nn.Sequential(a, torch.nn.ReLU())  # one model
    assert torch.equal(EmbeddingEnsemble(chain)(x), chain(x))


@pytest.mark.parametrize("make", [
    lambda v: EmbeddingEnsemble([torch.nn.Identity()], normalize_each=v),
    lambda v: FlipInference(torch.nn.Identity(), batched=v),
])
def test_flags_must_be_bools(make):
    with pytest.raises(TypeError, match="must be True or False, got str 'False'"):
        make("False")
    make(True)


def test_flip_of_a_non_tensor_is_a_type_error():
    import numpy as np

    with pytest.raises(TypeError, match="images must be a torch.Tensor .* got ndarray"):
        FlipInference(torch.nn.Identity())(np.zeros((2, 3, 4, 4)))
    with pytest.raises(TypeError, match="got int"):
        FlipInference(torch.nn.Identity())(3)
