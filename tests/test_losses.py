"""The paper's equations on small tensors, values computed by hand."""
import math

import pytest
import torch

from mammo_tl.modeling.losses import similarity_loss, top_likelihood_loss


def bce_to_zero(logit):
    """-log(1 - sigmoid(s)), written out."""
    p = 1.0 / (1.0 + math.exp(-logit))
    return -math.log(1.0 - p)


def test_top_likelihood_takes_the_k_highest():
    logits = torch.tensor([0.5, -2.0, 3.0, 1.0, -0.5])
    expected = (bce_to_zero(3.0) + bce_to_zero(1.0)) / 2
    assert top_likelihood_loss(logits, k=2).item() == pytest.approx(expected, rel=1e-6)


def test_top_likelihood_fewer_anchors_than_k_is_the_mean_over_all():
    logits = torch.tensor([0.0, 2.0, -1.0])
    expected = (math.log(2.0) + bce_to_zero(2.0) + bce_to_zero(-1.0)) / 3
    assert top_likelihood_loss(logits, k=256).item() == pytest.approx(expected, rel=1e-6)


def test_top_likelihood_ties_at_the_cut():
    logits = torch.tensor([1.0, 1.0, 1.0, -3.0])
    assert top_likelihood_loss(logits, k=2).item() == pytest.approx(bce_to_zero(1.0), rel=1e-6)


def test_top_likelihood_large_logits_are_finite():
    logits = torch.tensor([100.0, 1000.0, -1000.0], requires_grad=True)
    loss = top_likelihood_loss(logits, k=2)
    loss.backward()
    # softplus(s) = s for large s: (100 + 1000) / 2
    assert loss.item() == pytest.approx(550.0, rel=1e-6)
    assert torch.isfinite(logits.grad).all()
    # d/ds softplus(s) = sigmoid(s) -> 1, divided by k = 2; the anchor outside the top k gets nothing
    assert logits.grad.tolist() == pytest.approx([0.5, 0.5, 0.0])


def test_top_likelihood_gradient_only_reaches_top_anchors():
    logits = torch.tensor([0.3, -1.0, 2.0], requires_grad=True)
    top_likelihood_loss(logits, k=1).backward()
    assert logits.grad.tolist() == pytest.approx([0.0, 0.0, 1 / (1 + math.exp(-2.0))])


def test_top_likelihood_gradcheck():
    logits = torch.randn(40, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: top_likelihood_loss(x, k=7), (logits,))


def test_top_likelihood_rejects_bad_input():
    with pytest.raises(ValueError, match="1-D"):
        top_likelihood_loss(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="positive"):
        top_likelihood_loss(torch.zeros(3), k=0)


def test_similarity_by_hand():
    x1 = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    x2 = torch.tensor([[0.0, 2.0], [3.0, 4.0]])
    # cos = 0 for the orthogonal pair, 1 for the identical one
    assert similarity_loss(x1, x2).item() == pytest.approx(0.5)
    x1 = torch.tensor([[1.0, 2.0, 2.0]])
    x2 = torch.tensor([[2.0, 1.0, -2.0]])
    assert similarity_loss(x1, x2).item() == pytest.approx((2 + 2 - 4) / 9 + 0.0)
    x2 = torch.tensor([[0.0, 3.0, 4.0]])
    assert similarity_loss(x1, x2).item() == pytest.approx((6 + 8) / (3 * 5))


def test_similarity_matches_torch_cosine():
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    expected = torch.nn.functional.cosine_similarity(x1, x2, dim=1).mean()
    assert similarity_loss(x1, x2).item() == pytest.approx(expected.item(), abs=1e-6)


def test_similarity_empty_is_zero_in_graph():
    x1 = torch.zeros(0, 3, requires_grad=True)
    x2 = torch.zeros(0, 3, requires_grad=True)
    loss = similarity_loss(x1, x2)
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert x1.grad is not None and x1.grad.shape == (0, 3)


def test_similarity_zero_vector_gives_zero_not_nan():
    x1 = torch.tensor([[0.0, 0.0], [1.0, 0.0]], requires_grad=True)
    x2 = torch.tensor([[1.0, 1.0], [1.0, 0.0]], requires_grad=True)
    loss = similarity_loss(x1, x2)
    loss.backward()
    assert loss.item() == pytest.approx(0.5)
    assert torch.isfinite(x1.grad).all() and torch.isfinite(x2.grad).all()


def test_similarity_gradcheck():
    x1 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    x2 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(similarity_loss, (x1, x2))


def test_similarity_shape_mismatch():
    with pytest.raises(ValueError, match="one shape"):
        similarity_loss(torch.zeros(2, 3), torch.zeros(3, 3))


def test_half_precision_inputs_are_computed_in_float32():
    logits = torch.tensor([12.0, -3.0, 7.5], dtype=torch.float16)
    expected = (bce_to_zero(12.0) + bce_to_zero(7.5)) / 2
    out = top_likelihood_loss(logits, k=2)
    assert out.dtype == torch.float32 and out.item() == pytest.approx(expected, rel=1e-4)
    x = torch.tensor([[300.0, 400.0]], dtype=torch.float16)  # |x|^2 overflows float16
    assert similarity_loss(x, x).item() == pytest.approx(1.0, rel=1e-4)
