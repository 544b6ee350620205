"""TopLikelihoodRPN: detectron2's RPN with the paper's top likelihood loss for negative images."""
from __future__ import annotations

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.proposal_generator import PROPOSAL_GENERATOR_REGISTRY, RPN
from detectron2.structures import Boxes, Instances

from .losses import top_likelihood_loss
from .negatives import negative_images

# Anchor label for every anchor of a negative image: neither the standard objectness loss (labels >= 0)
# nor the regression loss (label == 1) sees it; the top likelihood loss takes the image instead. It also
# carries the decision (made once, from the targets) to losses(), which detectron2 does not give them.
NEGATIVE_IMAGE_LABEL = -2


@PROPOSAL_GENERATOR_REGISTRY.register()
class TopLikelihoodRPN(RPN):
    """RPN trained on positive and negative images (eq. 2)::

        L_rpn = L_cls^p + lambda1 * L_reg^p + lambda2 * L_tl

    * A positive image (at least one ground-truth box) gets detectron2's standard RPN loss: 256 sampled
      anchors, objectness BCE and box regression (lambda1 = ``MODEL.RPN.BBOX_REG_LOSS_WEIGHT``).
    * A negative image (empty ground truth) gets :func:`top_likelihood_loss` over its k anchors with the
      highest objectness (k = ``MODEL.RPN.TOP_LIKELIHOOD.NUM_ANCHORS``), weighted by lambda2
      (``MODEL.RPN.TOP_LIKELIHOOD.LOSS_WEIGHT``), and nothing else.

    Normalisation: detectron2 divides the summed RPN loss by ``BATCH_SIZE_PER_IMAGE * #images``. Here
    ``loss_rpn_cls`` and ``loss_rpn_loc`` are divided by ``BATCH_SIZE_PER_IMAGE * #positive images``
    and ``loss_rpn_tl`` is the mean over negative images of eq. (1), itself divided by k: each image
    contributes per-anchor-averaged terms, as in eq. (2). For a batch of one positive and one negative
    image, ``loss_rpn_cls`` is therefore twice what detectron2's RPN would report for the positive
    image's sampled anchors alone in that batch.

    ``loss_rpn_tl`` is in every training step's losses (a zero attached to the graph when the batch has
    no negative image, or when the loss is disabled), so all ranks log the same names.
    """

    @configurable
    def __init__(self, *, top_likelihood_enabled: bool = True, top_likelihood_k: int = 256,
                 top_likelihood_weight: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.top_likelihood_enabled = top_likelihood_enabled
        self.top_likelihood_k = top_likelihood_k
        self.top_likelihood_weight = top_likelihood_weight

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict:
        ret = super().from_config(cfg, input_shape)
        tl = cfg.MODEL.RPN.TOP_LIKELIHOOD
        ret.update(top_likelihood_enabled=tl.ENABLED, top_likelihood_k=tl.NUM_ANCHORS,
                   top_likelihood_weight=tl.LOSS_WEIGHT)
        return ret

    @torch.no_grad()
    def label_and_sample_anchors(self, anchors: list[Boxes],
                                 gt_instances: list[Instances]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        gt_labels, matched_gt_boxes = super().label_and_sample_anchors(anchors, gt_instances)
        if self.top_likelihood_enabled:
            for labels, negative in zip(gt_labels, negative_images(gt_instances)):
                if negative:
                    labels.fill_(NEGATIVE_IMAGE_LABEL)
        return gt_labels, matched_gt_boxes

    def losses(self, anchors: list[Boxes], pred_objectness_logits: list[torch.Tensor], gt_labels: list[torch.Tensor],
               pred_anchor_deltas: list[torch.Tensor], gt_boxes: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        all_logits = cat(pred_objectness_logits, dim=1)  # (N, sum(Hi*Wi*A))
        zero = all_logits.sum() * 0.0
        negative = torch.stack([(g == NEGATIVE_IMAGE_LABEL).all() for g in gt_labels])
        positive_idx = torch.nonzero(~negative).flatten().tolist()
        negative_idx = torch.nonzero(negative).flatten().tolist()

        if positive_idx:
            losses = super().losses(
                anchors,
                [x[positive_idx] for x in pred_objectness_logits],
                [gt_labels[i] for i in positive_idx],
                [x[positive_idx] for x in pred_anchor_deltas],
                [gt_boxes[i] for i in positive_idx],
            )
        else:
            losses = {"loss_rpn_cls": zero, "loss_rpn_loc": zero}

        if negative_idx:
            with torch.profiler.record_function("mammo_tl/top_likelihood_loss"):
                tl = torch.stack([top_likelihood_loss(all_logits[i], self.top_likelihood_k) for i in negative_idx])
            losses["loss_rpn_tl"] = tl.mean() * self.top_likelihood_weight
        else:
            losses["loss_rpn_tl"] = zero
        return losses
