"""The registered components: built from every config, trained on a pair, equal to detectron2 when off."""
import copy

import pytest
import torch
import torch.nn.functional as F
from detectron2.data import DatasetCatalog
from detectron2.layers import cat
from detectron2.modeling import PROPOSAL_GENERATOR_REGISTRY, ROI_HEADS_REGISTRY, build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from mammo_tl.config import get_mammo_tl_cfg
from mammo_tl.data import MammogramDatasetMapper, split_positive_negative
from tests.common import all_config_files, tiny_cfg


def test_registry_names_present():
    assert "TopLikelihoodRPN" in PROPOSAL_GENERATOR_REGISTRY
    assert "SuspectedTargetROIHeads" in ROI_HEADS_REGISTRY


@pytest.mark.parametrize("path", all_config_files(), ids=lambda p: p.split("configs/")[-1])
def test_every_config_builds_a_model(path):
    cfg = get_mammo_tl_cfg()
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    name = cfg.MODEL.PROPOSAL_GENERATOR.NAME
    assert type(model.proposal_generator).__name__ == name
    assert type(model.roi_heads).__name__ == cfg.MODEL.ROI_HEADS.NAME
    if name == "TopLikelihoodRPN":
        assert model.proposal_generator.top_likelihood_k == cfg.MODEL.RPN.TOP_LIKELIHOOD.NUM_ANCHORS == 256
        assert model.proposal_generator.top_likelihood_weight == 1.0
    if cfg.MODEL.ROI_HEADS.NAME == "SuspectedTargetROIHeads":
        assert model.roi_heads.similarity_weight == pytest.approx(0.1)
        assert model.roi_heads.similarity_feature == ("penultimate" if path.endswith("_penultimate.yaml")
                                                      else "softmax")
    if "paper/" in path:
        assert cfg.MODEL.RESNETS.DEPTH == 101
        assert cfg.INPUT.FIXED_SIZE == (512, 512)
        assert cfg.MODEL.ANCHOR_GENERATOR.SIZES == [[4], [8], [16], [32], [64]]
        assert cfg.SOLVER.OPTIMIZER == "ADAM" and cfg.SOLVER.BASE_LR == 1e-4
        assert cfg.SOLVER.MAX_ITER == 45000 and cfg.SOLVER.STEPS[0] == 9000
        assert cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN == 2000


def _pair(cfg):
    records = DatasetCatalog.get("mammo_synth_tiny_train")
    positives, negatives = split_positive_negative(records)
    cfg = cfg.clone()
    cfg.INPUT.RANDOM_FLIP = "none"  # the same pair every time
    mapper = MammogramDatasetMapper(cfg, is_train=True)
    return [mapper(positives[0]), mapper(negatives[0])]


def twin_models(cfg_a, cfg_b, seed):
    """Models of two configs with the same weights (those of ``cfg_a``'s, built after ``torch.manual_seed(seed)``),
    in training mode."""
    torch.manual_seed(seed)
    a, b = build_model(cfg_a), build_model(cfg_b)
    b.load_state_dict(a.state_dict())
    a.train(), b.train()
    return a, b


def _losses(model, batch, seed=0):
    torch.manual_seed(seed)
    with EventStorage():
        return model(copy.deepcopy(batch))


def test_training_step_gives_finite_method_losses_and_backbone_gradients(tiny_datasets):
    cfg = tiny_cfg()
    model = build_model(cfg)
    model.train()
    losses = _losses(model, _pair(cfg))
    assert {"loss_rpn_tl", "loss_sim", "loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"} <= set(losses)
    for k, v in losses.items():
        assert torch.isfinite(v), k
    assert losses["loss_rpn_tl"].item() > 0
    assert losses["loss_sim"].item() > 0
    for name in ("loss_rpn_tl", "loss_sim"):
        model.zero_grad()
        losses = _losses(model, _pair(cfg))
        losses[name].backward()
        grad = model.backbone.bottom_up.stem.conv1.weight.grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_rpn_tl_equals_eq1_on_the_negative_image(tiny_datasets):
    cfg = tiny_cfg()
    model = build_model(cfg)
    model.train()
    batch = _pair(cfg)
    losses = _losses(model, batch)
    # recompute eq. (1) for the negative image directly from the RPN head's logits
    with torch.no_grad():
        images = model.preprocess_image(batch)
        features = model.backbone(images.tensor)
        rpn = model.proposal_generator
        logits, _ = rpn.rpn_head([features[f] for f in rpn.in_features])
        negative = cat([x[1].permute(1, 2, 0).flatten() for x in logits])
        top = negative.sort(descending=True).values[:256]
        expected = -torch.log(1 - torch.sigmoid(top.double())).mean()
    assert losses["loss_rpn_tl"].item() == pytest.approx(expected.item(), rel=1e-4)


def test_components_switched_off_equal_detectron2(tiny_datasets):
    off = tiny_cfg(opts=["MODEL.RPN.TOP_LIKELIHOOD.ENABLED", False, "MODEL.ROI_HEADS.SIMILARITY.ENABLED", False,
                         "MODEL.ROI_HEADS.SUSPECTED_TARGET.NUM_TOP_PROPOSALS", 0])
    vanilla = tiny_cfg(opts=["MODEL.PROPOSAL_GENERATOR.NAME", "RPN", "MODEL.ROI_HEADS.NAME", "StandardROIHeads"])
    model_off, model_std = twin_models(off, vanilla, seed=1)
    batch = _pair(off)
    a, b = _losses(model_off, batch, seed=3), _losses(model_std, batch, seed=3)
    assert set(b) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}
    for k in b:
        assert a[k].item() == pytest.approx(b[k].item(), rel=1e-6, abs=1e-9), k
    assert a["loss_rpn_tl"].item() == 0.0 and a["loss_sim"].item() == 0.0


def test_negative_top_proposals_are_always_sampled():
    cfg = tiny_cfg(opts=["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 16,
                         "MODEL.ROI_HEADS.SUSPECTED_TARGET.NUM_TOP_PROPOSALS", 5])
    cfg.MODEL.ROI_HEADS.PROPOSAL_APPEND_GT = False
    model = build_model(cfg)
    heads = model.roi_heads
    g = torch.Generator().manual_seed(0)
    n = 300
    xy = torch.rand(n, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 10 + torch.rand(n, 2, generator=g) * 10], dim=1)
    proposals = Instances((128, 128), proposal_boxes=Boxes(boxes), objectness_logits=torch.randn(n, generator=g))
    target = Instances((128, 128), gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0, dtype=torch.long))
    top5 = set(torch.topk(proposals.objectness_logits, 5).values.tolist())
    for _ in range(5):
        with EventStorage():
            sampled = heads.label_and_sample_proposals([proposals], [target])[0]
        assert len(sampled) == 16
        assert top5 <= set(sampled.objectness_logits.tolist())
        assert (sampled.gt_classes == cfg.MODEL.ROI_HEADS.NUM_CLASSES).all()
        assert not sampled.has("gt_boxes")


def test_similarity_loss_pairs_fg_with_negative_top_k(tiny_datasets):
    """loss_sim recomputed from the head's own scores with the pairing written out in the test."""
    cfg = tiny_cfg()
    model = build_model(cfg)
    model.train()
    heads = model.roi_heads
    batch = _pair(cfg)
    captured = {}
    original = heads.box_predictor.forward

    def spy(x):
        out = original(x)
        captured["scores"] = out[0]
        return out

    heads.box_predictor.forward = spy
    sampled_store = {}
    original_sample = heads.label_and_sample_proposals

    def spy_sample(proposals, targets):
        out = original_sample(proposals, targets)
        sampled_store["proposals"] = out
        return out

    heads.label_and_sample_proposals = spy_sample
    losses = _losses(model, batch)
    pos, neg = sampled_store["proposals"]
    probs = F.softmax(captured["scores"].detach(), dim=1)
    p_pos, p_neg = probs[: len(pos)], probs[len(pos):]
    fg = [i for i in range(len(pos)) if pos.gt_classes[i] == 0]
    fg.sort(key=lambda i: -pos.objectness_logits[i].item())
    top = sorted(range(len(neg)), key=lambda i: -neg.objectness_logits[i].item())[: len(fg)]
    sims = [F.cosine_similarity(p_pos[i], p_neg[j], dim=0).item() for i, j in zip(fg, top)]
    assert len(sims) > 0
    assert losses["loss_sim"].item() == pytest.approx(0.1 * sum(sims) / len(sims), rel=1e-4)


@pytest.mark.slow
def test_method_lowers_objectness_of_negative_top_anchors(tiny_datasets):
    """A few steps with the method lower the negative image's top-256 objectness, more than the same
    steps without the top likelihood loss (the control), and bring the top anchors closer to the
    image's typical (median) anchor: the loss aims at the suspected targets, not the whole image."""
    cfg = tiny_cfg()
    batch = _pair(cfg)
    torch.manual_seed(0)
    init = build_model(cfg).state_dict()

    def top_objectness(model):
        with torch.no_grad():
            feats = model.backbone(model.preprocess_image(batch[1:]).tensor)
            rpn = model.proposal_generator
            logits, _ = rpn.rpn_head([feats[f] for f in rpn.in_features])
            logits = cat([x[0].flatten() for x in logits])
            top = torch.topk(logits, 256).values.mean().item()
            return top, top - logits.median().item()

    def train(drop):
        model = build_model(cfg)
        model.load_state_dict(init)
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for step in range(6):
            losses = _losses(model, batch, seed=step)
            opt.zero_grad()
            sum(v for k, v in losses.items() if k not in drop).backward()
            opt.step()
        return top_objectness(model)

    model = build_model(cfg)
    model.load_state_dict(init)
    before, _ = top_objectness(model)
    (top_method, gap_method), (top_control, gap_control) = train(drop=()), train(drop=("loss_rpn_tl",))
    assert top_method < before - 0.2, (before, top_method)
    assert top_method < top_control - 0.05, (top_method, top_control)
    assert gap_method < 0.75 * gap_control, (gap_method, gap_control)
