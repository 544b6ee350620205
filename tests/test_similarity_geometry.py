"""The similarity loss of eq. (3) on two-class softmax vectors, as the paper defines it (FEATURE softmax), computed
by mammo_tl's own function (mammo_tl.modeling.losses.similarity_loss): where its gradient vanishes, its symmetry,
which way a gradient step moves the two scores, and its size against the classification loss's gradient.
Expected values from the closed form, derived by hand in each test (docs/experiments.md, "The similarity loss")."""
import math

import pytest
import torch
import torch.nn.functional as F

from mammo_tl.modeling.losses import similarity_loss


def _cos(p, q):
    """cos((p, 1-p), (q, 1-q)) by hand."""
    return (p * q + (1 - p) * (1 - q)) / math.sqrt((p * p + (1 - p) ** 2) * (q * q + (1 - q) ** 2))


def _dcos_dp(p, q):
    """d cos / d p with a = pq + (1-p)(1-q), A = p^2 + (1-p)^2, B = q^2 + (1-q)^2:
    ((2q - 1) - a (2p - 1) / A) / sqrt(A B). By symmetry d cos / d q = _dcos_dp(q, p)."""
    a, big_a, big_b = p * q + (1 - p) * (1 - q), p * p + (1 - p) ** 2, q * q + (1 - q) ** 2
    return ((2 * q - 1) - a * (2 * p - 1) / big_a) / math.sqrt(big_a * big_b)


def _loss_and_grads(p, q):
    """L_sim of one pair, the positive image's proposal (cancer score p) against the negative image's (q), and
    its gradient with respect to p and q."""
    tp = torch.tensor(p, dtype=torch.float64, requires_grad=True)
    tq = torch.tensor(q, dtype=torch.float64, requires_grad=True)
    x1 = torch.stack([tp, 1 - tp])[None]
    x2 = torch.stack([tq, 1 - tq])[None]
    loss = similarity_loss(x1, x2)
    gp, gq = torch.autograd.grad(loss, (tp, tq))
    return loss.item(), gp.item(), gq.item()


@pytest.mark.parametrize("p,q", [(0.9, 0.6), (0.6, 0.9), (0.99, 0.9), (0.3, 0.8), (0.5, 0.2)])
def test_value_and_gradient_match_the_closed_form(p, q):
    loss, gp, gq = _loss_and_grads(p, q)
    assert loss == pytest.approx(_cos(p, q), rel=1e-12)
    assert gp == pytest.approx(_dcos_dp(p, q), rel=1e-9, abs=1e-15)
    assert gq == pytest.approx(_dcos_dp(q, p), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("p", [0.01, 0.3, 0.5, 0.9, 0.99])
def test_no_gradient_when_the_two_scores_are_equal(p):
    """cos = 1, its maximum, at p = q: the gradient is zero there, at p = q = 0.99 too (a model whose scores
    saturate gets nothing from the loss for a look-alike it scores as high as a cancer)."""
    loss, gp, gq = _loss_and_grads(p, p)
    assert loss == pytest.approx(1.0, abs=1e-12)
    assert gp == pytest.approx(0.0, abs=1e-12) and gq == pytest.approx(0.0, abs=1e-12)


def test_symmetric():
    """Swapping the positive and the negative image's vectors changes nothing: the loss does not know which is
    the cancer."""
    for p, q in ((0.9, 0.6), (0.2, 0.7)):
        a, gp_a, gq_a = _loss_and_grads(p, q)
        b, gp_b, gq_b = _loss_and_grads(q, p)
        assert a == pytest.approx(b, rel=1e-14)
        assert (gp_a, gq_a) == pytest.approx((gq_b, gp_b), rel=1e-12)


@pytest.mark.parametrize("p,q", [(0.6, 0.9), (0.3, 0.5), (0.9, 0.99)])
def test_a_step_pushes_the_scores_apart_the_wrong_way_when_the_look_alike_outscores_the_cancer(p, q):
    """q > p: a gradient-descent step on L_sim lowers the cancer's score p and raises the look-alike's q
    (d L/dp > 0, d L/dq < 0), the opposite of what the method is for; with p > q it moves them the right way."""
    _, gp, gq = _loss_and_grads(p, q)
    assert gp > 0 and gq < 0
    step = 1e-3
    p2, q2 = p - step * gp, q - step * gq
    assert p2 < p and q2 > q
    assert _cos(p2, q2) < _cos(p, q)  # the step did lower the loss
    _, gp, gq = _loss_and_grads(q, p)  # the cancer now outscores the look-alike
    assert gp < 0 and gq > 0


def _logit_grads(p, q, weight=0.1):
    """Gradients, on the logits z = (z_cancer, z_background) of the two proposals, of weight * L_sim on their
    softmax vectors and of the cross-entropy (classification) loss of each (cancer: class 0; look-alike:
    background, class 1), one pair, each loss summed over the two proposals."""
    z = torch.tensor([[math.log(p / (1 - p)), 0.0], [math.log(q / (1 - q)), 0.0]], dtype=torch.float64,
                     requires_grad=True)
    s = F.softmax(z, dim=1)
    (g_sim,) = torch.autograd.grad(weight * similarity_loss(s[:1], s[1:]), z)
    (g_cls,) = torch.autograd.grad(F.cross_entropy(z, torch.tensor([0, 1]), reduction="sum"), z)
    return g_sim[:, 0], g_cls[:, 0]


@pytest.mark.parametrize("p,q,bound", [(0.99, 0.9, 0.0013), (0.9, 0.6, 0.036), (0.99, 0.99, 1e-12)])
def test_size_against_the_classification_gradient(p, q, bound):
    """On the look-alike's cancer logit z_q (p = sigmoid(z) for two classes, dp/dz = p (1 - p)):
    0.1 * dcos/dq * q (1 - q) for L_sim against q for its cross-entropy towards background. At p = 0.99, q = 0.9
    the similarity gradient is 0.12 % of the classification one, at p = 0.9, q = 0.6 3.5 %, at p = q zero
    (one pair, both losses summed; in training loss_cls is a mean over the R sampled RoIs of the batch and
    loss_sim over K pairs, which multiplies the ratio by R / K)."""
    g_sim, g_cls = _logit_grads(p, q)
    by_hand_sim = 0.1 * _dcos_dp(q, p) * q * (1 - q)
    assert g_sim[1].item() == pytest.approx(by_hand_sim, rel=1e-9, abs=1e-15)
    assert g_cls[1].item() == pytest.approx(q, rel=1e-9)
    assert g_cls[0].item() == pytest.approx(p - 1, rel=1e-9)
    assert abs(g_sim[1].item()) / g_cls[1].item() < bound
    assert abs(g_sim[1].item()) / g_cls[1].item() > bound / 2 or bound < 1e-6
