"""mammo_tl's config keys. Defaults are the paper's values (Xiao et al., MICCAI 2019) where it gives them.

Config files are data: every YAML file mammo_tl reads (a config, its ``_BASE_`` chain, a run's saved
config.yaml) is parsed by :func:`load_yaml_file`, a safe loader (no tag constructs a Python object) that also
refuses a key given twice in one mapping. detectron2's own ``CfgNode.merge_from_file`` falls back to
``yaml.unsafe_load``, which runs code named in the file; :func:`get_mammo_tl_cfg` returns a
:class:`SafeCfgNode`, whose ``merge_from_file`` never does.
"""
from __future__ import annotations

import os
from collections.abc import Container, Mapping
from typing import Any

import yaml
from detectron2.config import CfgNode as CN  # noqa: N817  (detectron2's own name for it)

BASE_KEY = "_BASE_"
# Keys whose True says "run code from a file I trust": taken from the command line only, never from a data file.
COMMAND_LINE_ONLY = (("MODEL", "WEIGHTS_TRUSTED_PICKLE"),)


class ConfigFileError(ValueError):
    """A YAML file that cannot be read as a config: the message names the file and, where YAML has one, the line
    and column."""


class _ConfigLoader(yaml.SafeLoader):
    """yaml.SafeLoader (plain scalars, lists and mappings only) that refuses duplicate keys: YAML would keep the
    last one and drop the first silently."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # unhashable key: let SafeLoader report it
                continue
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found key {key!r} a second time (first on line {first.start_mark.line + 1})", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


# Bounds on what a config file may make the loader do: its size in bytes, and its nodes with every alias expanded
# (a few hundred bytes of nested aliases, YAML's "billion laughs", expand to billions of nodes that yacs then
# copies one by one). mammo_tl's largest config, merged with detectron2's defaults, has under 2,000.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_NODES = 100_000


def _read_config_bytes(path):
    """The bytes of the regular file ``path``: a FIFO, a device or a folder is refused without blocking (a FIFO
    opened for reading waits for a writer forever), and so is a file over :data:`MAX_CONFIG_BYTES`."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ConfigFileError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigFileError(f"{path}: is a folder, not a config file") from None
    except OSError as e:
        raise ConfigFileError(f"{path}: cannot be read ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if stat.S_ISDIR(st.st_mode):
            raise ConfigFileError(f"{path}: is a folder, not a config file")
        if not stat.S_ISREG(st.st_mode):
            raise ConfigFileError(f"{path}: not a regular file (a FIFO, socket or device): a config must be a file "
                                  f"on disk")
        if st.st_size > MAX_CONFIG_BYTES:
            raise ConfigFileError(f"{path}: {st.st_size} bytes, more than a config file holds (at most "
                                  f"{MAX_CONFIG_BYTES})")
        return f.read(MAX_CONFIG_BYTES + 1)


def _expanded_nodes(root, path):
    """The number of nodes of a composed YAML document with every alias expanded, computed once per node (so
    in time linear in the file); ConfigFileError over :data:`MAX_CONFIG_NODES` or for an alias inside its own
    anchor."""
    sizes, busy, stack = {}, set(), [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                    else list(node.value) if isinstance(node, yaml.SequenceNode) else [])
        if done:
            busy.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[key] > MAX_CONFIG_NODES:
                mark = node.start_mark
                raise ConfigFileError(f"{path}, line {mark.line + 1}, column {mark.column + 1}: its aliases expand "
                                      f"to more than {MAX_CONFIG_NODES} values, far more than any config holds (a "
                                      f"YAML alias bomb?); write the values out")
            continue
        if key in busy:
            mark = node.start_mark
            raise ConfigFileError(f"{path}, line {mark.line + 1}, column {mark.column + 1}: an alias refers to the "
                                  f"value that holds it (a recursive anchor)")
        busy.add(key)
        stack.append((node, True))
        for c in children:
            if id(c) in busy:
                mark = c.start_mark
                raise ConfigFileError(f"{path}, line {mark.line + 1}, column {mark.column + 1}: an alias refers to "
                                      f"the value that holds it (a recursive anchor)")
            stack.append((c, False))
    return sizes[id(root)]


def load_yaml_file(path: str | os.PathLike) -> Any:
    """The YAML file ``path`` as plain data (dicts, lists, strings, numbers, booleans, None).

    Raises :class:`ConfigFileError` naming the file and line for a tag that would construct a Python object
    (``!!python/object/apply:...``), for any other YAML error and for a key given twice in one mapping; and
    naming the file for one that is not a regular file (a FIFO is refused, not waited on), is larger than
    :data:`MAX_CONFIG_BYTES`, nests too deeply, or whose aliases expand to more than :data:`MAX_CONFIG_NODES`
    values."""
    data = _read_config_bytes(path)
    try:
        loader = _ConfigLoader(data.decode("utf-8"))
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _expanded_nodes(node, path)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else path
        problem = e.problem or e.context or str(e)
        if isinstance(e, yaml.constructor.ConstructorError) and "could not determine a constructor" in problem:
            problem = (f"{problem}: mammo_tl reads config files as data (YAML's safe loader), and a tag that "
                       "constructs a Python object would run code; remove the tag")
        raise ConfigFileError(f"{where}: {problem}") from None
    except yaml.YAMLError as e:
        raise ConfigFileError(f"{path}: not valid YAML ({e})") from None
    except UnicodeDecodeError as e:
        raise ConfigFileError(f"{path}: not UTF-8 text ({e})") from None
    except RecursionError:
        raise ConfigFileError(f"{path}: nested too deeply to be a config") from None


def check_no_trust_switch(data: Mapping[str, Any], filename: str | os.PathLike) -> None:
    """Refuse a config file (``data`` as read from ``filename``) that sets a key of :data:`COMMAND_LINE_ONLY` to
    anything but False: MODEL.WEIGHTS_TRUSTED_PICKLE True makes a .pkl MODEL.WEIGHTS be unpickled, which runs any
    code it holds, so only the person typing the command may say it, never a file they were given (a config, a
    file of its _BASE_ chain, a run's saved config.yaml)."""
    for section, key in COMMAND_LINE_ONLY:
        node = data.get(section)
        if isinstance(node, Mapping) and key in node and node[key] is not False:
            raise ConfigFileError(
                f"{filename}: sets {section}.{key} {node[key]!r}, which a config file may not: it makes a .pkl "
                f"MODEL.WEIGHTS be unpickled, and unpickling runs any code the file holds. Remove the line; if you "
                f"trust the .pkl, say so on the command line (`{section}.{key} True` after the command's options), "
                f"or better convert it once with `python tools/convert_weights.py --trusted FILE.pkl OUT.pth`")


def _merge_a_into_b(a, b, path):
    for k, v in a.items():
        if isinstance(v, dict) and k in b:
            if not isinstance(b[k], dict):
                raise ConfigFileError(f"{path}: key {k!r} is a mapping here but not in its _BASE_")
            _merge_a_into_b(v, b[k], path)
        else:
            b[k] = v


def _yacs_message(e: BaseException) -> str:
    """yacs' error in words: its text without KeyError's quotes, the fix where it is one."""
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    if "Non-existent" in text:
        text += " (a key mammo_tl and detectron2 do not know: check its spelling, see docs/configs.md)"
    return text


class SafeCfgNode(CN):
    """detectron2's CfgNode whose files (and their ``_BASE_`` chains) are read with :func:`load_yaml_file`,
    never with ``yaml.unsafe_load``, whatever ``allow_unsafe`` a caller passes."""

    @classmethod
    def load_yaml_with_base(cls, filename: str | os.PathLike, allow_unsafe: bool = False,
                            _chain: tuple[str, ...] = ()) -> dict:
        """fvcore's ``_BASE_`` inheritance (a base path is relative to the file naming it; a list of bases
        merges in order), each file read as data. A ``_BASE_`` cycle is refused."""
        filename = os.fspath(filename)
        real = os.path.realpath(filename)
        if real in _chain:
            raise ConfigFileError(f"{filename}: _BASE_ cycle: {' -> '.join(_chain)} -> {real}")
        cfg = load_yaml_file(filename)
        if cfg is None:
            cfg = {}
        if not isinstance(cfg, dict):
            raise ConfigFileError(f"{filename}: a config file holds a mapping of keys, found a {type(cfg).__name__}")
        check_no_trust_switch(cfg, filename)
        if BASE_KEY not in cfg:
            return cfg
        bases = cfg.pop(BASE_KEY)
        if not isinstance(bases, (str, list)) or not all(isinstance(b, str) for b in
                                                         (bases if isinstance(bases, list) else [bases])):
            raise ConfigFileError(f"{filename}: _BASE_ must be a file name or a list of file names, got {bases!r}")
        merged = {}
        for name in (bases if isinstance(bases, list) else [bases]):
            base = os.path.expanduser(name)
            base = base if os.path.isabs(base) else os.path.join(os.path.dirname(filename), base)
            _merge_a_into_b(cls.load_yaml_with_base(base, _chain=(*_chain, real)), merged, filename)
        _merge_a_into_b(cfg, merged, filename)
        return merged

    def merge_from_file(self, cfg_filename: str | os.PathLike, allow_unsafe: bool = False) -> None:
        if not os.path.lexists(cfg_filename):
            raise ConfigFileError(f"{cfg_filename}: config file not found")
        if not os.path.isfile(cfg_filename):
            load_yaml_file(cfg_filename)  # refuses a folder or a FIFO, naming it (detectron2 says "does not exist")
        try:
            super().merge_from_file(cfg_filename, allow_unsafe=False)
        except ConfigFileError:
            raise
        except RecursionError:
            raise ConfigFileError(f"{cfg_filename}: nested too deeply to be a config") from None
        except (KeyError, ValueError, AssertionError, TypeError) as e:  # yacs: unknown key, wrong type, ...
            raise ConfigFileError(f"{cfg_filename}: {_yacs_message(e)}") from None

    def merge_from_list(self, cfg_list: list) -> None:
        """yacs' KEY VALUE overrides; ConfigFileError naming them for an odd-length list, an unknown key or a
        value of the wrong type (yacs raises several exception types)."""
        try:
            super().merge_from_list(cfg_list)
        except (KeyError, ValueError, AssertionError, TypeError) as e:
            raise ConfigFileError(f"config overrides {' '.join(map(str, cfg_list))}: {_yacs_message(e)}") from None


def as_safe_cfg(cfg: CN) -> SafeCfgNode:
    """``cfg`` (a detectron2 CfgNode, nested nodes included) turned into a :class:`SafeCfgNode` in place, keeping
    its flags (frozen, new_allowed). Returns it."""
    if isinstance(cfg, CN):
        object.__setattr__(cfg, "__class__", SafeCfgNode)
        for v in cfg.values():
            as_safe_cfg(v)
    return cfg


def add_mammo_tl_config(cfg: CN) -> CN:
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
    # The upper bound of K in the similarity loss (the negative image's highest-objectness proposals paired with
    # the positive image's foreground ones) and, with FORCE_TOP_PROPOSALS, how many of them are forced into the
    # negative image's sampled RoIs. Default: BATCH_SIZE_PER_IMAGE * POSITIVE_FRACTION of detectron2's
    # defaults = the largest possible K.
    cfg.MODEL.ROI_HEADS.SUSPECTED_TARGET.NUM_TOP_PROPOSALS = 128
    # True: the negative image's NUM_TOP_PROPOSALS highest-objectness proposals are always among its sampled RoIs
    # (as background) in the classification loss; False: detectron2 samples its RoIs at random. The paper does
    # not describe forced sampling, so the default is off; configs/synthetic/d_tl_similarity.yaml sets it on, as
    # its results were measured, and configs/synthetic_ddsm/e_forced_sampling.yaml measures it as its own row.
    cfg.MODEL.ROI_HEADS.SUSPECTED_TARGET.FORCE_TOP_PROPOSALS = False

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
    # Validation sets: evaluated every TEST.EVAL_PERIOD iterations during training (and at its end) into
    # metrics.json / TensorBoard as "validation/..."; BestCheckpointHook keeps model_best.pth by
    # TEST.PATIENT.BEST_METRIC on the first of them, and the test sets (DATASETS.TEST) are evaluated once, at the
    # end, on that checkpoint (inference/) and on the final one (inference_final/). Models are chosen on these,
    # never on DATASETS.TEST: TEST.EVAL_PERIOD > 0 needs one, patient-disjoint from the test sets.
    cfg.DATASETS.VALIDATION = ()

    # --- Input -------------------------------------------------------------------------------------
    # "fixed": resize every image to INPUT.FIXED_SIZE (the paper); "shortest_edge": detectron2's
    # MIN_SIZE_TRAIN / MAX_SIZE_TRAIN resizing.
    cfg.INPUT.RESIZE_MODE = "fixed"
    cfg.INPUT.FIXED_SIZE = (512, 512)  # (height, width)
    # Intensity window mapped to the model's 0..255 input, as percentiles of the image's pixels.
    # (0, 100) is plain min-max scaling of each image.
    cfg.INPUT.INTENSITY_PERCENTILES = (0.0, 100.0)
    # How tools/predict.py prepares a full-field image before the model; match the options the training
    # data was prepared with (tools/prepare_dataset.py --no-crop / --flip). Crop to the breast's bounding box:
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
    # Metric the best-checkpoint hook maximises on DATASETS.VALIDATION[0] (a key of the patient evaluator's
    # results); the first evaluation with the highest value wins a tie.
    cfg.TEST.PATIENT.BEST_METRIC = "auc"
    # Bootstrap resamples (by patient) for the 95% intervals; 0 disables them.
    cfg.TEST.PATIENT.BOOTSTRAP = 1000
    # Operating points (thresholds chosen on a validation set by tools/operating_points.py) at which
    # --eval-only also reports the patient metrics: a path to an operating_points.json, "" for none, or
    # "auto": the operating_points.json beside MODEL.WEIGHTS when there is one. Refused for other weights.
    cfg.TEST.PATIENT.OPERATING_POINTS = "auto"

    # --- Weights files (mammo_tl/checkpoint.py) -----------------------------------------------
    # A ".pkl" MODEL.WEIGHTS is unpickled, and unpickling runs any code the file holds. False: a .pkl is
    # read only from detectron2's model zoo (detectron2://..., https://dl.fbaipublicfiles.com/detectron2/...).
    # True says this .pkl comes from a source you trust. Better: convert it once with
    # tools/convert_weights.py into a pickle-free .pth (every .pth is read with torch.load(weights_only=True)).
    cfg.MODEL.WEIGHTS_TRUSTED_PICKLE = False
    return cfg


def get_mammo_tl_cfg() -> SafeCfgNode:
    """detectron2's default config with mammo_tl's keys added, as a :class:`SafeCfgNode` (files merged into it
    are read as data)."""
    from detectron2.config import get_cfg

    return as_safe_cfg(add_mammo_tl_config(get_cfg()))


def flatten_config(node: Mapping[str, Any] | None, prefix: str = "") -> dict[str, Any]:
    """A config (CfgNode or nested dicts, as config.yaml holds it) as {"KEY.SUB": value}."""
    out = {}
    for k, v in (node or {}).items():
        key = f"{prefix}{k}"
        out.update(flatten_config(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def _plain(v):
    """YAML writes tuples as lists."""
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v


def differing_keys(a: Mapping[str, Any], b: Mapping[str, Any], ignore: Container[str] = ()) -> list[str]:
    """Keys (other than ``ignore``) whose values differ between two flattened configs."""
    return sorted(k for k in a.keys() | b.keys() if k not in ignore and _plain(a.get(k)) != _plain(b.get(k)))
