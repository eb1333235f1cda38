import numpy as np
import pytest
import torch

from pml_grouploss.evaluation import ReIDAccuracyCalculator

CPU = torch.device("cpu")


def _ap(ranked_match):
    hits = np.flatnonzero(ranked_match)
    return np.mean([(i + 1) / (h + 1) for i, h in enumerate(hits)])


def test_cmc_and_map_match_brute_force():
    g = torch.Generator().manual_seed(0)
    c = torch.randn(15, 8, generator=g)
    qy = torch.arange(15)
    gy = torch.randint(0, 18, (120,), generator=g)  # ids 15..17 never queried; some queries lone
    q = c[qy] + torch.randn(15, 8, generator=g)
    gal = torch.cat([c, torch.randn(3, 8, generator=g)])[gy] + torch.randn(120, 8, generator=g)
    calc = ReIDAccuracyCalculator(
        cmc_ranks=(1, 5), include=("cmc_rank_1", "cmc_rank_5", "reid_mAP"), device=CPU
    )
    r = calc.get_accuracy(q, qy, gal, gy, ref_includes_query=False)
    order = torch.argsort(torch.cdist(q, gal), dim=1).numpy()
    match = gy.numpy()[order] == qy.numpy()[:, None]
    valid = match.any(1)
    for k in (1, 5):
        assert r[f"cmc_rank_{k}"] == pytest.approx(match[valid, :k].any(1).mean())
    assert r["reid_mAP"] == pytest.approx(np.mean([_ap(m) for m in match[valid]]))
    assert r["cmc_rank_1"] <= r["cmc_rank_5"]


def test_bad_ranks():
    with pytest.raises(ValueError, match="cmc_ranks"):
        ReIDAccuracyCalculator(cmc_ranks=(0,))
