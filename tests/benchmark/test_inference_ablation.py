import torch

from pml_grouploss.benchmark.inference_ablation import GRIDS, _choose, _mixed_pooling_identity
from pml_grouploss.trunks import build_trunk


def _images(size):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(1, size, size, generator=g), 0) for _ in range(4)]


def test_mixed_pooling_is_the_identity_on_a_1x1_final_map():
    trunk, _ = build_trunk("cnn", 1, pretrained=False, width=8)
    # 28x28 -> four 2x2 max-poolings -> 1x1: max = average, the surgery changes nothing
    note = _mixed_pooling_identity(trunk, _images(28), torch.device("cpu"))
    assert note.startswith("not applicable: the identity") and "1x1" in note
    assert _mixed_pooling_identity(trunk, _images(64), torch.device("cpu")) is None  # 4x4 map


def test_identity_strategies_are_not_evaluated_and_carry_their_note():
    evaluated = []

    def evaluate(settings, split):
        evaluated.append(next(iter(settings)))
        return {"precision_at_1": 0.5}

    def identity(name):
        return "not applicable: the identity" if name == "mixed_pooling" else None

    chosen, notes = _choose(evaluate, "precision_at_1", identity)
    assert "mixed_pooling" not in chosen
    assert notes == {"mixed_pooling": "not applicable: the identity"}
    assert set(evaluated) == set(GRIDS) - {"mixed_pooling"}
    assert chosen["beta"] == GRIDS["beta"][0]  # the first of equal scores
