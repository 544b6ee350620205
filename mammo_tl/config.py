"""mammo_tl's config keys. Defaults are the paper's values (Xiao et al., MICCAI 2019) where it gives them."""
from detectron2.config import CfgNode as CN


def add_mammo_tl_config(cfg):
    """Add every mammo_tl key, with its default, to ``cfg`` (a detectron2 CfgNode) in place."""
    # --- Top likelihood loss (eq. 1, 2): RPN loss of negative images -----------------------------
    cfg.MODEL.RPN.TOP_LIKELIHOOD = CN()
    # False: TopLikelihoodRPN computes detectron2's standard RPN loss on every image.
    cfg.MODEL.RPN.TOP_LIKELIHOOD.ENABLED = True
    # k: the anchors with the highest objectness in a negative image that enter the loss (paper: 256).
    cfg.MODEL.RPN.TOP_LIKELIHOOD.NUM_ANCHORS = 256
    # lambda2 in eq. (2). lambda1 (positive images' regression) is detectron2's MODEL.RPN.BBOX_REG_LOSS_WEIGHT.
    cfg.MODEL.RPN.TOP_LIKELIHOOD.LOSS_WEIGHT = 1.0

    # --- Negative images in the ROI head ("suspected targets") -----------------------------------
    cfg.MODEL.ROI_HEADS.SUSPECTED_TARGET = CN()
    # The negative image's highest-objectness proposals always among its sampled RoIs (as background);
    # detectron2 would otherwise sample them at random. Also the upper bound of K in the similarity loss.
    # Default: BATCH_SIZE_PER_IMAGE * POSITIVE_FRACTION of detectron2's defaults = the largest possible K.
    cfg.MODEL.ROI_HEADS.SUSPECTED_TARGET.NUM_TOP_PROPOSALS = 128

    # --- Similarity loss (eq. 3, 4) ---------------------------------------------------------------
    cfg.MODEL.ROI_HEADS.SIMILARITY = CN()
    # False: SuspectedTargetROIHeads reports loss_sim = 0 and otherwise trains as StandardROIHeads.
    cfg.MODEL.ROI_HEADS.SIMILARITY.ENABLED = True
    # lambda4 in eq. (4). lambda3 (regression) is detectron2's MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT.
    cfg.MODEL.ROI_HEADS.SIMILARITY.LOSS_WEIGHT = 0.1
    # "softmax": class-softmax vectors (the paper); "penultimate": the box head's output features.
    cfg.MODEL.ROI_HEADS.SIMILARITY.FEATURE = "softmax"

    # --- Paired positive/negative training data --------------------------------------------------
    cfg.DATALOADER.PAIRED = CN()
    # True: every batch holds N positive and N negative images from DATASETS.TRAIN, where a record with
    # annotations is positive and one with `annotations: []` is negative. N = IMS_PER_BATCH / 2 / #GPUs.
    cfg.DATALOADER.PAIRED.ENABLED = False
    # Seeds of the two infinitely shuffled streams; -1: a random seed shared by all ranks.
    cfg.DATALOADER.PAIRED.POSITIVE_SEED = -1
    cfg.DATALOADER.PAIRED.NEGATIVE_SEED = -1

    # --- Data sets saved as records JSON (tools/prepare_dataset.py, tools/split_dataset.py) ---------------
    # "name=path/to/records.json" entries, registered in DatasetCatalog when tools/train_net.py starts.
    cfg.DATASETS.REGISTER_JSON = []

    # --- Input -------------------------------------------------------------------------------------
    # "fixed": resize every image to INPUT.FIXED_SIZE (the paper); "shortest_edge": detectron2's
    # MIN_SIZE_TRAIN / MAX_SIZE_TRAIN resizing.
    cfg.INPUT.RESIZE_MODE = "fixed"
    cfg.INPUT.FIXED_SIZE = (512, 512)  # (height, width)
    # Intensity window mapped to the model's 0..255 input, as percentiles of the image's pixels.
    # (0, 100) is plain min-max scaling of each image.
    cfg.INPUT.INTENSITY_PERCENTILES = (0.0, 100.0)
    # How tools/predict.py prepares a full-field image before the model; match the options the training
    # data was prepared with (tools/prepare_dataset.py --crop / --flip). Crop to the breast's bounding box:
    cfg.INPUT.CROP_TO_BREAST = True
    # Mirror images whose chest wall is on the right, so every breast faces the same way:
    cfg.INPUT.CANONICAL_FLIP = False

    # --- Solver -------------------------------------------------------------------------------------
    # "ADAM" (the paper) or "SGD" (detectron2's default optimizer).
    cfg.SOLVER.OPTIMIZER = "ADAM"
    cfg.SOLVER.ADAM_BETAS = (0.9, 0.999)

    # --- Patient-level evaluation ---------------------------------------------------------------------
    cfg.TEST.PATIENT = CN()
    # A patient is predicted positive when any of its boxes scores above this (paper: 0.5).
    cfg.TEST.PATIENT.THRESHOLD = 0.5
    # Metric the best-checkpoint hook maximises (a key of the patient evaluator's results).
    cfg.TEST.PATIENT.BEST_METRIC = "auc"
    # Bootstrap resamples (by patient) for the 95% intervals; 0 disables them.
    cfg.TEST.PATIENT.BOOTSTRAP = 1000
    # Operating points (thresholds chosen on a validation set by tools/operating_points.py) at which
    # --eval-only also reports the patient metrics: a path to an operating_points.json, "" for none, or
    # "auto": the operating_points.json beside MODEL.WEIGHTS when there is one. Refused for other weights.
    cfg.TEST.PATIENT.OPERATING_POINTS = "auto"

    # --- Weights files (mammo_tl/engine/checkpoint.py) -----------------------------------------------
    # A ".pkl" MODEL.WEIGHTS is unpickled, and unpickling runs any code the file holds. False: a .pkl is
    # read only from detectron2's model zoo (detectron2://..., https://dl.fbaipublicfiles.com/detectron2/...).
    # True says this .pkl comes from a source you trust. Better: convert it once with
    # tools/convert_weights.py into a pickle-free .pth (every .pth is read with torch.load(weights_only=True)).
    cfg.MODEL.WEIGHTS_TRUSTED_PICKLE = False
    return cfg


def get_mammo_tl_cfg():
    """detectron2's default config with mammo_tl's keys added."""
    from detectron2.config import get_cfg

    return add_mammo_tl_config(get_cfg())


def flatten_config(node, prefix=""):
    """A config (CfgNode or nested dicts, as config.yaml holds it) as {"KEY.SUB": value}."""
    out = {}
    for k, v in (node or {}).items():
        key = f"{prefix}{k}"
        out.update(flatten_config(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def _plain(v):
    """YAML writes tuples as lists."""
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v


def differing_keys(a, b, ignore=()):
    """Keys (other than ``ignore``) whose values differ between two flattened configs."""
    return sorted(k for k in a.keys() | b.keys() if k not in ignore and _plain(a.get(k)) != _plain(b.get(k)))
