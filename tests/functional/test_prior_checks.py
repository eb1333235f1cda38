"""The public label-side functions name bad arguments (they returned NaN, truncated float
labels, or failed inside torch): ``group_loss``, ``refined_label_loss``,
``initial_assignment`` / ``log_initial_assignment``; and the row functions around them."""
import pytest
import torch

from pml_grouploss import functional as F

E = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
LOGITS = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
LABELS = torch.tensor([0, 0, 1, 1, 2, 2])
ANCHORS = torch.tensor([0, 2])


def _group_loss(**kwargs):
    args = dict(embeddings=E, logits=LOGITS, labels=LABELS, anchors=ANCHORS, temperature=1.0,
                num_iterations=1)
    return F.group_loss(**{**args, **kwargs})


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(temperature=0.0), ValueError, r"temperature must be a finite number > 0, got 0.0"),
    (dict(temperature=-1.0), ValueError, r"temperature must be a finite number > 0"),
    (dict(temperature=float("nan")), ValueError, r"temperature must be a finite number > 0"),
    (dict(labels=torch.tensor([0, 0, 1, 1, 2, 3])), ValueError,
     r"labels must lie in \[0, 3\) \(the columns of logits\), got values in \[0, 3\]"),
    (dict(labels=torch.tensor([0, 0, 1, 1, 2, -1])), ValueError, r"got values in \[-1, 2\]"),
    (dict(labels=LABELS.float() + 0.9), TypeError, r"labels must be an integer tensor"),
    (dict(labels=LABELS[:5]), ValueError, r"labels must be \(6,\), one per row of logits"),
    (dict(anchors=torch.tensor([0, 7])), ValueError,
     r"anchors \(anchor indices\) must index into the batch \[0, 6\), got values in \[0, 7\]"),
    (dict(anchors=torch.tensor([0.9, 2.9])), TypeError, r"anchors \(anchor indices\) must be"),
    (dict(anchors=torch.tensor([True, False, True])), ValueError,
     r"anchors is a boolean mask of 3 entries"),
    (dict(embeddings=E[:0], logits=LOGITS[:0], labels=LABELS[:0], anchors=ANCHORS[:0]),
     ValueError, r"logits must be \(n, m\) with n, m >= 1, got \(0, 3\)"),
    (dict(embeddings=E[:5]), ValueError, r"one row per sample, got \(5, 4\) and \(6, 3\)"),
    (dict(embeddings=E.long()), TypeError, r"embeddings must be a floating-point tensor"),
    (dict(ce_weight=-1.0), ValueError, r"ce_weight must be a finite number >= 0"),
    (dict(ce_weight=1e308), ValueError, r"ce_weight must be a finite number >= 0 and <= 100"),
    (dict(nll_weight=101.0), ValueError, r"nll_weight must be a finite number >= 0 and <= 100"),
    (dict(num_iterations=2**40), ValueError, r"num_iterations must be an int <= 1000, got"),
    # finite logits whose cross-entropy overflows float32 (returned an inf loss)
    (dict(logits=torch.tensor([[3e38, -3e38, 0.0]] * 6), temperature=1e38), ValueError,
     r"the loss is inf in torch.float32: .*scale the logits down"),
    (dict(logits=LOGITS.masked_fill(LABELS[:, None] == torch.arange(3), -float("inf"))),
     ValueError, r"the loss is inf in torch.float32: .*a label's logit -inf"),
])
def test_group_loss_names_the_bad_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        _group_loss(**kwargs)


def test_checked_arguments_give_the_values_of_before():
    out = _group_loss(labels=LABELS.to(torch.int32), anchors=torch.tensor([True, False] * 3))
    W = F.pearson_similarity(E)
    ref = F.refined_label_terms(W, LOGITS, LABELS, torch.tensor([True, False] * 3),
                                temperature=1.0, num_iterations=1)
    assert torch.equal(out["group_loss_per_sample"], ref.nll)
    assert torch.isfinite(out["loss"])


def test_refined_label_loss_checks_the_cross_entropy_arguments():
    W = F.pearson_similarity(E)
    args = dict(temperature=1.0, num_iterations=1)
    with pytest.raises(ValueError, match=r"ce_logits must be \(6, m'\)"):
        F.refined_label_loss(W, LOGITS, LABELS, ANCHORS, ce_logits=LOGITS[:4], **args)
    with pytest.raises(ValueError, match=r"ce_labels must lie in \[0, 2\)"):
        F.refined_label_loss(W, LOGITS, LABELS, ANCHORS, ce_logits=LOGITS[:, :2], **args)
    with pytest.raises(ValueError, match="ce_labels needs ce_logits"):
        F.refined_label_loss(W, LOGITS, LABELS, ANCHORS, ce_labels=LABELS, **args)
    with pytest.raises(TypeError, match="W must be a floating-point tensor"):
        F.refined_label_loss(W.long(), LOGITS, LABELS, ANCHORS, **args)


def test_replicator_dynamics_refuse_more_than_1000_steps():
    """2**40 steps ran for hours instead of naming num_iterations."""
    W, X = F.pearson_similarity(E), torch.softmax(LOGITS, dim=1)
    for dynamics in (F.replicator_dynamics, F.log_replicator_dynamics):
        with pytest.raises(ValueError, match=r"num_iterations must be an int <= 1000, got "
                                             r"1099511627776; the papers use 1-3"):
            dynamics(W, X, 2**40)
    assert torch.isfinite(F.replicator_dynamics(W, X, 1000)).all()


def test_initial_assignment_checks_and_keeps_the_anchor_rows_one_hot():
    with pytest.raises(ValueError, match="temperature"):
        F.initial_assignment(LOGITS, LABELS, ANCHORS, 0.0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        F.log_initial_assignment(LOGITS, LABELS + 1, ANCHORS, 1.0)
    X0 = F.initial_assignment(LOGITS, LABELS, ANCHORS, 2.0)
    assert torch.equal(X0[ANCHORS], torch.eye(3)[LABELS[ANCHORS]])
    torch.testing.assert_close(X0[1], torch.softmax(LOGITS[1] / 2.0, 0))


@pytest.mark.parametrize("call,error,match", [
    (lambda: F.consistency(torch.rand(5, 5), torch.rand(6, 3)), ValueError,
     r"W must be \(n, n\) and X \(n, m\) with the same n"),
    (lambda: F.pearson_correlation(E, torch.randn(3, 5)), ValueError,
     r"query and reference must be \(n, d\) and \(r, d\) with the same embedding size"),
    (lambda: F.standardize_rows(torch.ones(3, 4, dtype=torch.long)), TypeError,
     r"x must be a floating-point tensor"),
    (lambda: F.rms_normalize(torch.ones(3, 4, dtype=torch.long)), TypeError,
     r"x must be a floating-point tensor"),
    (lambda: F.rms_normalize(torch.randn(4, 0)), ValueError, r"x must be \(n, d\) with d >= 1"),
    (lambda: F.mixed_pool2d(torch.ones(1, 3, 4, 4, dtype=torch.long), 0.5), TypeError,
     r"features must be a floating-point tensor"),
    (lambda: F.beta_normalize(torch.zeros(2, 3), eps=0.0), ValueError,
     r"eps must be a finite number > 0"),
])
def test_row_functions_name_the_bad_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()
