from .losses import similarity_loss, top_likelihood_loss
from .roi_heads import SuspectedTargetROIHeads
from .rpn import TopLikelihoodRPN

__all__ = ["top_likelihood_loss", "similarity_loss", "TopLikelihoodRPN", "SuspectedTargetROIHeads"]
