"""GradMLLoss over all pairs of normalized embeddings (its defaults, no miner): what the
negative term can and cannot see, by hand (docs/gradml.md, "All pairs or a miner").

On the unit sphere ``sum_{i<j} ||x_i - x_j||^2 = n^2 - ||sum_i x_i||^2``, so for ``k = 2`` the
sum over the negative pairs is ``n^2 - ||s||^2 - sum_pos d^2``: it sees the batch sum ``s``,
not which classes lie close to which."""
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import reducers

from pml_grouploss import losses


def _pairs(x, labels):
    """Squared distances of the unordered positive and negative pairs of normalized ``x``."""
    u = F.normalize(x, dim=1)
    d2 = torch.cdist(u, u) ** 2
    upper = torch.ones_like(d2, dtype=torch.bool).triu(1)
    same = labels[:, None] == labels[None, :]
    return u, d2[same & upper], d2[~same & upper]


@pytest.mark.parametrize("w", [1.0, 0.5])
def test_k2_negative_term_is_the_batch_sum(w):
    torch.manual_seed(0)
    x, labels = torch.randn(24, 8, dtype=torch.float64), torch.arange(6).repeat_interleave(4)
    u, pos, neg = _pairs(x, labels)
    n, s2 = x.shape[0], u.sum(dim=0).square().sum()
    neg_sum = n * n - s2 - pos.sum()  # sum over the negative pairs, from s alone
    assert neg.sum().item() == pytest.approx(neg_sum.item(), rel=1e-12)
    paper = losses.GradMLLoss(w=w, reducer=reducers.SumReducer())(x, labels)
    assert paper.item() == pytest.approx(((1 + w) * pos.sum() + w * s2 - w * n * n).item(),
                                         rel=1e-12)
    mean_form = losses.GradMLLoss(w=w)(x, labels)
    assert mean_form.item() == pytest.approx((pos.mean() - w * neg_sum / neg.numel()).item(),
                                             rel=1e-12)


# Four classes of two samples, each class collapsed to one point of the sphere, batch sum 0:
# SPREAD puts the classes on +-e1, +-e2 (all four apart); MERGED puts classes 0 and 1 on +e1
# and 2 and 3 on -e1 (two pairs of classes indistinguishable).
LABELS = torch.arange(4).repeat_interleave(2)
E1, E2 = torch.eye(2, dtype=torch.float64)
SPREAD = torch.stack([E1, -E1, E2, -E2]).repeat_interleave(2, dim=0)
MERGED = torch.stack([E1, E1, -E1, -E1]).repeat_interleave(2, dim=0)
# negative class pairs, squared distances: SPREAD 4, 4 and four 2; MERGED 0, 0 and four 4
# (times 4 sample pairs each); sum of d^k over the 24 negative sample pairs:
NEG_SUM = {
    1.0: {"spread": 4 * (2 * 2 + 4 * 2**0.5), "merged": 4 * (4 * 2)},
    2.0: {"spread": 4 * (2 * 4 + 4 * 2), "merged": 4 * (4 * 4)},
    3.0: {"spread": 4 * (2 * 8 + 4 * 2**1.5), "merged": 4 * (4 * 8)},
}


@pytest.mark.parametrize("k", [1.0, 2.0, 3.0])
def test_which_configuration_all_pairs_prefer(k):
    loss_fn = losses.GradMLLoss(k=k, reducer=reducers.SumReducer())
    spread, merged = loss_fn(SPREAD, LABELS).item(), loss_fn(MERGED, LABELS).item()
    assert spread == pytest.approx(-NEG_SUM[k]["spread"], abs=1e-9)  # positives at distance 0
    assert merged == pytest.approx(-NEG_SUM[k]["merged"], abs=1e-9)
    if k == 2.0:  # indifferent: both have s = 0
        assert spread == pytest.approx(merged, abs=1e-9)
    elif k < 2:  # rewards spreading the classes apart
        assert spread < merged - 1
    else:  # rewards merging classes into antipodal groups
        assert merged < spread - 1


def test_a_pair_miner_tells_apart_what_all_pairs_cannot_at_k2():
    # NEAR: classes 0 and 1 at +-0.1 rad around e1, 2 and 3 around -e1; batch sum 0 as SPREAD's.
    c, s = torch.cos(torch.tensor(0.1, dtype=torch.float64)), torch.sin(
        torch.tensor(0.1, dtype=torch.float64))
    near = torch.stack([torch.stack([c, s]), torch.stack([c, -s]), torch.stack([-c, s]),
                        torch.stack([-c, -s])]).repeat_interleave(2, dim=0)
    all_pairs = losses.GradMLLoss(reducer=reducers.SumReducer())
    assert all_pairs(near, LABELS).item() == pytest.approx(all_pairs(SPREAD, LABELS).item(),
                                                           abs=1e-9)
    # PML's PairMarginMiner (negatives closer than 0.8) finds only NEAR's close classes
    # (distance 2 sin 0.1 ~ 0.2), and the loss pushes exactly those apart.
    from pytorch_metric_learning import miners

    miner = miners.PairMarginMiner()
    assert miner(SPREAD, LABELS)[2].numel() == 0
    mined = miner(near, LABELS)
    assert mined[2].numel() == 2 * 2 * 4  # classes (0, 1) and (2, 3), 4 pairs each, both orders
    x = near.clone().requires_grad_(True)
    loss = all_pairs(x, LABELS, mined)
    assert loss.item() == pytest.approx(-16 * (2 * s.item()) ** 2, rel=1e-9)
    loss.backward()
    # the descent direction moves each point away from its nearby class along the circle
    tangent = torch.stack([-x[:, 1], x[:, 0]], dim=1).detach()  # +90 degrees
    along = (-x.grad * tangent).sum(dim=1)
    assert torch.all(along * torch.sign(near[:, 1] * near[:, 0]) > 0)
