import copy
import pickle

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners

from pml_grouploss.losses import GroupLoss
from pml_grouploss.miners import AnchorMiner
from pml_grouploss.miners.anchor_miner import NOT_PAIRS_MESSAGE, AnchorIndices

LABELS = torch.tensor([2, 0, 2, 1, 0, 2, 1])


def test_first_anchors_and_stats():
    miner = AnchorMiner(num_anchors_per_class=1, collect_stats=True)
    (anchors,) = miner(torch.randn(7, 3), LABELS)
    assert anchors.tolist() == [0, 1, 3]
    assert (miner.num_anchors, miner.num_non_anchors) == (3, 4)
    assert {"num_anchors", "num_non_anchors"} <= set(miner._record_these_stats)


def test_counters_set_as_pml_miners_set_num_triplets():
    # PML sets num_triplets on every call; it registers it as a stat (record-keeper logs it,
    # reset_stats zeroes it) only with collect_stats=True. AnchorMiner does the same.
    embeddings = torch.randn(7, 3)
    for collect_stats in (False, True):
        ours = AnchorMiner(num_anchors_per_class=2, collect_stats=collect_stats)
        pml = pml_miners.TripletMarginMiner(collect_stats=collect_stats)
        ours(embeddings, LABELS)
        triplets = pml(embeddings, LABELS)
        assert (ours.num_anchors, ours.num_non_anchors) == (6, 1)
        assert pml.num_triplets == len(triplets[0]) > 0
        registered = set(getattr(ours, "_record_these_stats", []))
        pml_registered = set(getattr(pml, "_record_these_stats", []))
        assert ("num_anchors" in registered) == ("num_triplets" in pml_registered)
        assert ("num_non_anchors" in registered) == collect_stats
        ours.reset_stats()
        expected = (0, 0) if collect_stats else (6, 1)
        assert (ours.num_anchors, ours.num_non_anchors) == expected
    # the counters follow each batch
    miner = AnchorMiner(num_anchors_per_class=1)
    miner(torch.randn(4, 3), torch.tensor([0, 0, 0, 0]))
    assert (miner.num_anchors, miner.num_non_anchors) == (1, 3)


def test_random_anchors_seeded():
    labels = torch.arange(4).repeat_interleave(6)
    a = AnchorMiner(2, "random", seed=1)(torch.randn(24, 3), labels)[0]
    b = AnchorMiner(2, "random", seed=1)(torch.randn(24, 3), labels)[0]
    assert a.tolist() == b.tolist()
    assert torch.bincount(labels[a]).tolist() == [2, 2, 2, 2]


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_anchors_per_class"):
        AnchorMiner(-1)
    with pytest.raises(ValueError, match="selection"):
        AnchorMiner(2, "middle")
    with pytest.raises(TypeError, match="seed must be an int, got float 1.5"):
        AnchorMiner(2, "random", seed=1.5)
    with pytest.raises(ValueError, match="seed must fit in 64 bits"):
        AnchorMiner(2, "random", seed=2**70)


@pytest.mark.parametrize("labels,error,match", [
    (torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, float("nan")]), TypeError,
     "labels must be an integer tensor of class ids, got dtype torch.float32"),
    (torch.tensor([True, True, False, False, True, True]), TypeError, "dtype torch.bool"),
    (None, TypeError, "labels must be a torch.Tensor of class ids, got NoneType"),
    ([0, 0, 0, 1, 1, 1], TypeError, "got list"),
])
def test_labels_that_are_not_class_ids_are_named(labels, error, match):
    # float labels were accepted (every NaN its own class, so an anchor); bool ones failed in
    # torch's searchsorted, None and lists in PML's forward
    with pytest.raises(error, match=match):
        AnchorMiner()(torch.randn(6, 4), labels)


def test_ref_emb_is_ignored_anchors_index_embeddings():
    # TwoStreamMetricLoss calls tuple_miner(first_stream, labels, second_stream, labels)
    labels = torch.tensor([0, 0, 1, 1])
    miner = AnchorMiner(1)
    (anchors,) = miner(torch.randn(4, 3), labels, torch.randn(6, 3), torch.arange(6))
    assert anchors.tolist() == [0, 2]
    assert (miner.num_anchors, miner.num_non_anchors) == (2, 2)


def test_output_is_a_plain_one_tuple_for_grouploss_and_user_code():
    e = torch.randn(7, 3)
    out = AnchorMiner(1)(e, LABELS)
    assert isinstance(out, AnchorIndices) and isinstance(out, tuple) and len(out) == 1
    assert out[0].dtype == torch.long and out[0].tolist() == [0, 1, 3]
    assert [t.tolist() for t in out] == [[0, 1, 3]]  # iteration outside PML is normal
    for copied in (pickle.loads(pickle.dumps(out)), copy.deepcopy(out)):
        assert type(copied) is AnchorIndices and copied[0].tolist() == [0, 1, 3]
    loss = GroupLoss(3, 3, num_anchors=0)
    assert loss(e, LABELS, out).item() == loss(e, LABELS, (out[0].clone(),)).item()
    assert loss(e, LABELS, out).item() != loss(e, LABELS).item()


@pytest.mark.parametrize(
    "make_loss",
    [
        pml_losses.TripletMarginLoss,  # "not enough values to unpack (expected 4, got 1)"
        pml_losses.ContrastiveLoss,  # "... (expected 3, got 1)"
        lambda: pml_losses.ProxyAnchorLoss(3, 3),  # silently weighted the anchors only
        lambda: pml_losses.ArcFaceLoss(3, 3),  # silently weighted the anchors only
        pml_losses.NTXentLoss,
    ],
)
def test_pml_loss_given_anchor_miner_output_says_what_to_do(make_loss):
    out = AnchorMiner(1)(torch.randn(7, 3), LABELS)
    with pytest.raises(TypeError) as info:
        make_loss()(torch.randn(7, 3), LABELS, out)
    assert str(info.value) == NOT_PAIRS_MESSAGE
    assert "miners=[AnchorMiner(), None]" in NOT_PAIRS_MESSAGE


def test_output_assertion_rejects_other_tuples():
    miner = AnchorMiner(1)
    with pytest.raises(TypeError, match="1-tuple of anchor indices, got 3"):
        miner.output_assertion((torch.zeros(1),) * 3)


def test_collect_stats_must_be_a_bool():
    # collect_stats="False" is truthy: PML registered the stats the user turned off
    with pytest.raises(TypeError, match="^collect_stats must be True or False, got str 'False'"):
        AnchorMiner(collect_stats="False")
    miner = AnchorMiner(collect_stats=False)
    assert miner.collect_stats is False
    assert "num_anchors" not in getattr(miner, "_record_these_stats", [])
    assert "num_anchors" in AnchorMiner(collect_stats=True)._record_these_stats
