"""SuspectedTargetROIHeads: StandardROIHeads that samples negative images' suspected targets and adds
the paper's similarity loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.structures import Boxes, Instances

from .losses import similarity_loss
from .negatives import negative_images

SIMILARITY_FEATURES = ("softmax", "penultimate")


@ROI_HEADS_REGISTRY.register()
class SuspectedTargetROIHeads(StandardROIHeads):
    """Fast R-CNN head of eq. (4)::

        L_fast = L_cls + lambda3 * L_reg + lambda4 * L_sim

    * Negative images (empty ground truth): every sampled proposal is background and has no
      regression target (detectron2's behaviour for empty ground truth). With ``FORCE_TOP_PROPOSALS``
      their ``NUM_TOP_PROPOSALS`` highest-objectness proposals (the suspected targets) are always among
      the sampled RoIs and the rest of the image's ``BATCH_SIZE_PER_IMAGE`` are drawn at random; without
      it (the default: the paper does not describe it) all are drawn at random, as detectron2 does, which
      rarely scores the suspected targets in the classification loss.
    * ``loss_sim`` (:func:`similarity_loss`, weight lambda4): the i-th positive image in the batch is
      paired with the i-th negative image. K = the positive image's number of sampled foreground
      proposals, capped by ``NUM_TOP_PROPOSALS``. Rows: the positive image's foreground proposals and
      the negative image's K highest-objectness proposals (the image's own, whether or not they were
      sampled for the classification loss: without ``FORCE_TOP_PROPOSALS`` they are pooled apart), each
      in descending objectness order. With ``NUM_TOP_PROPOSALS`` 0, the negative image's rows are its
      sampled RoIs in that order. Feature: the class-softmax vector (``FEATURE: softmax``, the paper) or
      the box head's output (``penultimate``). Reported in every training step (zero when disabled or
      when the batch holds no pair).
    """

    @configurable
    def __init__(self, *, num_top_negative_proposals: int = 128, force_top_negative_proposals: bool = False,
                 similarity_enabled: bool = True, similarity_weight: float = 0.1, similarity_feature: str = "softmax",
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if similarity_feature not in SIMILARITY_FEATURES:
            raise ValueError(f"MODEL.ROI_HEADS.SIMILARITY.FEATURE must be one of {SIMILARITY_FEATURES}, "
                             f"got {similarity_feature!r}")
        if self.train_on_pred_boxes:
            raise ValueError("SuspectedTargetROIHeads does not support MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES")
        if num_top_negative_proposals < 0:
            raise ValueError("MODEL.ROI_HEADS.SUSPECTED_TARGET.NUM_TOP_PROPOSALS must be >= 0, "
                             f"got {num_top_negative_proposals}")
        self.num_top_negative_proposals = num_top_negative_proposals
        self.force_top_negative_proposals = bool(force_top_negative_proposals)
        self.similarity_enabled = similarity_enabled
        self.similarity_weight = similarity_weight
        self.similarity_feature = similarity_feature

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict:
        ret = super().from_config(cfg, input_shape)
        ret.update(
            num_top_negative_proposals=cfg.MODEL.ROI_HEADS.SUSPECTED_TARGET.NUM_TOP_PROPOSALS,
            force_top_negative_proposals=cfg.MODEL.ROI_HEADS.SUSPECTED_TARGET.FORCE_TOP_PROPOSALS,
            similarity_enabled=cfg.MODEL.ROI_HEADS.SIMILARITY.ENABLED,
            similarity_weight=cfg.MODEL.ROI_HEADS.SIMILARITY.LOSS_WEIGHT,
            similarity_feature=cfg.MODEL.ROI_HEADS.SIMILARITY.FEATURE,
        )
        return ret

    # ---- sampling ---------------------------------------------------------------------------------
    @property
    def _forces_top_proposals(self) -> bool:
        return self.force_top_negative_proposals and self.num_top_negative_proposals > 0

    @torch.no_grad()
    def label_and_sample_proposals(self, proposals: list[Instances], targets: list[Instances]) -> list[Instances]:
        with torch.profiler.record_function("mammo_tl/suspected_target_sampling"):
            return self._label_and_sample(proposals, targets)

    def _label_and_sample(self, proposals, targets):
        negative = negative_images(targets)
        # the suspected targets of the similarity loss when the sampled RoIs need not hold them: kept here for
        # _forward_box (detectron2's forward passes it the sampled proposals only)
        self._suspected_targets = None
        if self.similarity_enabled and not self._forces_top_proposals and self.num_top_negative_proposals > 0:
            self._suspected_targets = [
                p[torch.argsort(p.objectness_logits, descending=True, stable=True)[:self.num_top_negative_proposals]]
                if neg else None for p, neg in zip(proposals, negative)]
        if self._forces_top_proposals:
            # Negative images' proposals in descending objectness, so that _sample_proposals can keep the
            # first ones. (The RPN already returns them so; this makes it a guarantee.)
            proposals = [
                p[torch.argsort(p.objectness_logits, descending=True, stable=True)] if neg else p
                for p, neg in zip(proposals, negative)
            ]
        sampled = super().label_and_sample_proposals(proposals, targets)
        for p, neg in zip(sampled, negative):
            p.from_negative_image = torch.full((len(p),), neg, dtype=torch.bool, device=p.objectness_logits.device)
        return sampled

    def _sample_proposals(self, matched_idxs, matched_labels, gt_classes):
        # detectron2 calls this per image with that image's ground-truth classes: none for exactly the images
        # negative_images() calls negative
        if gt_classes.numel() > 0 or not self._forces_top_proposals:
            return super()._sample_proposals(matched_idxs, matched_labels, gt_classes)
        # Negative image: proposals arrive sorted by objectness (label_and_sample_proposals).
        n = matched_idxs.numel()
        num_top = min(self.num_top_negative_proposals, self.batch_size_per_image, n)
        num_rest = min(self.batch_size_per_image, n) - num_top
        rest = torch.randperm(n - num_top, device=matched_idxs.device)[:num_rest] + num_top
        sampled = torch.cat([torch.arange(num_top, device=matched_idxs.device), rest])
        labels = torch.full_like(sampled, self.num_classes)
        return sampled, labels

    # ---- losses -----------------------------------------------------------------------------------
    def _forward_box(self, features: dict[str, torch.Tensor], proposals: list[Instances]):
        if not self.training:
            return super()._forward_box(features, proposals)
        box_features = self.box_pooler([features[f] for f in self.box_in_features],
                                       [x.proposal_boxes for x in proposals])
        box_features = self.box_head(box_features)
        predictions = self.box_predictor(box_features)
        losses = self.box_predictor.losses(predictions, proposals)
        suspected = self.__dict__.pop("_suspected_targets", None)
        with torch.profiler.record_function("mammo_tl/similarity_loss"):
            losses["loss_sim"] = self._similarity_loss(predictions[0], box_features, proposals,
                                                       self._suspected_target_features(features, suspected))
        return losses

    def _similarity_features(self, scores, box_features):
        return F.softmax(scores, dim=1) if self.similarity_feature == "softmax" else box_features.flatten(1)

    def _suspected_target_features(self, features, suspected):
        """Per image: the similarity-loss features of a negative image's highest-objectness proposals
        (``suspected``, from _label_and_sample), pooled apart from the sampled RoIs; None for other images, or
        None when the sampled RoIs hold them."""
        if suspected is None or all(s is None for s in suspected):
            return None
        device = next(iter(features.values())).device
        boxes = [s.proposal_boxes if s is not None else Boxes(torch.zeros(0, 4, device=device)) for s in suspected]
        box_features = self.box_head(self.box_pooler([features[f] for f in self.box_in_features], boxes))
        feats = self._similarity_features(self.box_predictor(box_features)[0], box_features)
        return [f if s is not None else None for f, s in zip(feats.split([len(b) for b in boxes]), suspected)]

    def _similarity_loss(self, scores, box_features, proposals: list[Instances], suspected=None):
        zero = scores.sum() * 0.0
        if not self.similarity_enabled:
            return zero
        feats = self._similarity_features(scores, box_features)
        per_image = feats.split([len(p) for p in proposals])
        positives, negatives = [], []
        for i, (f, p) in enumerate(zip(per_image, proposals)):
            order = torch.argsort(p.objectness_logits, descending=True, stable=True)
            if len(p) and bool(p.from_negative_image[0]):
                # already in descending objectness when pooled apart
                negatives.append(suspected[i] if suspected is not None and suspected[i] is not None else f[order])
            elif len(p):
                is_fg = (p.gt_classes[order] >= 0) & (p.gt_classes[order] < self.num_classes)
                positives.append(f[order][is_fg])
        pair_losses = []
        for x1, x2 in zip(positives, negatives):
            k = min(len(x1), len(x2))
            pair_losses.append(similarity_loss(x1[:k], x2[:k]))
        if not pair_losses:
            return zero
        return torch.stack(pair_losses).mean() * self.similarity_weight
