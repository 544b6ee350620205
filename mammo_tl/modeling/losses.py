"""The paper's two losses as pure tensor functions (Xiao et al., MICCAI 2019, section 2.2).

Nothing here knows about detectron2: the registered components in ``rpn.py`` and ``roi_heads.py``
gather the tensors and call these.
"""
import torch
import torch.nn.functional as F


def _at_least_float32(x):
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def top_likelihood_loss(objectness_logits: torch.Tensor, k: int = 256) -> torch.Tensor:
    """Top likelihood loss of ONE negative image, eq. (1) with N_cls = k::

        L_tl = (1 / k) * sum_{i in top-k(p)} L_cls(p_i, p*_i = 0)

    where p_i = sigmoid(s_i) is anchor i's predicted probability of being an object, the sum runs over
    the k anchors with the highest p_i, and L_cls(p, 0) = -log(1 - p) is binary cross-entropy towards
    "not an object". Computed from the logits as softplus(s_i) = log(1 + exp(s_i)), which is finite for
    any finite logit.

    Args:
        objectness_logits: 1-D tensor, the objectness logit s_i of every anchor of the image
            (all feature levels concatenated).
        k: number of top anchors (paper: 256). With fewer than k anchors, the mean over all of them.

    Returns:
        A scalar tensor. Ties at the k-th place are broken arbitrarily; they do not change the value.
    """
    if objectness_logits.dim() != 1:
        raise ValueError(f"objectness_logits must be 1-D, got shape {tuple(objectness_logits.shape)}")
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    n = objectness_logits.numel()
    if n == 0:
        return objectness_logits.sum()
    top = torch.topk(objectness_logits, min(k, n), sorted=False).values
    # BCE(sigmoid(s), 0) = -log(1 - sigmoid(s)) = softplus(s); float32 keeps it exact under AMP
    return F.softplus(_at_least_float32(top)).mean()


def similarity_loss(x1: torch.Tensor, x2: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Similarity loss, eq. (3)::

        L_sim(X1, X2) = (1 / K) * sum_{i=1..K} sim(X1_i, X2_i),   sim(a, b) = a . b / (|a| |b|)

    X1 holds the feature vectors of the positive image's K foreground proposals, X2 those of the
    negative image's K highest-scoring proposals; row i of one is paired with row i of the other.
    Minimising it pushes the two apart. Weighted by lambda4 (paper: 0.1) in eq. (4).

    Args:
        x1, x2: ``(K, D)`` tensors.
        eps: lower bound on each norm, so a zero vector gives similarity 0 instead of NaN.

    Returns:
        A scalar tensor; for K = 0 a zero that is still part of the autograd graph.
    """
    if x1.shape != x2.shape or x1.dim() != 2:
        raise ValueError(f"x1 and x2 must be (K, D) tensors of one shape, got {tuple(x1.shape)} and {tuple(x2.shape)}")
    if x1.shape[0] == 0:
        return (x1.sum() + x2.sum()) * 0.0
    x1, x2 = _at_least_float32(x1), _at_least_float32(x2)
    dot = (x1 * x2).sum(dim=1)
    norms = x1.norm(dim=1).clamp_min(eps) * x2.norm(dim=1).clamp_min(eps)
    return (dot / norms).mean()
