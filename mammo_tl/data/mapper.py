"""DatasetMappers for mammograms: 16-bit/DICOM reading, fixed-size resize, positive/negative pairs."""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from .image_io import read_image, to_model_input
from .records import is_negative


def build_mammo_augmentation(cfg: CfgNode, is_train: bool) -> list[T.Augmentation]:
    """INPUT.RESIZE_MODE "fixed": resize to INPUT.FIXED_SIZE (the paper's 512 x 512); "shortest_edge":
    detectron2's own resizing. Plus INPUT.RANDOM_FLIP in training."""
    mode = cfg.INPUT.RESIZE_MODE
    if mode == "shortest_edge":
        return utils.build_augmentation(cfg, is_train)
    if mode != "fixed":
        raise ValueError(f"INPUT.RESIZE_MODE must be 'fixed' or 'shortest_edge', got {mode!r}")
    h, w = cfg.INPUT.FIXED_SIZE
    augs = [T.Resize((int(h), int(w)))]
    if is_train and cfg.INPUT.RANDOM_FLIP != "none":
        augs.append(T.RandomFlip(horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                                 vertical=cfg.INPUT.RANDOM_FLIP == "vertical"))
    return augs


class MammogramDatasetMapper(DatasetMapper):
    """detectron2's DatasetMapper for single-channel 16-bit PNG or DICOM mammograms.

    The image is windowed to 0..255 (INPUT.INTENSITY_PERCENTILES), repeated to 3 channels and resized
    (INPUT.RESIZE_MODE). Records keep their ``patient_id``, ``laterality`` and ``view``. A negative image's
    ``instances`` hold no cancer box (empty, or boxed benign findings only), which is how the model tells it
    (mammo_tl.modeling.negatives).
    """

    @configurable
    def __init__(self, is_train: bool, *, intensity_percentiles: Sequence[float] = (0.0, 100.0), **kwargs) -> None:
        super().__init__(is_train, **kwargs)
        self.intensity_percentiles = tuple(float(p) for p in intensity_percentiles)

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> dict:
        ret = super().from_config(cfg, is_train)
        ret["augmentations"] = build_mammo_augmentation(cfg, is_train)
        ret["intensity_percentiles"] = cfg.INPUT.INTENSITY_PERCENTILES
        return ret

    def image_to_tensor(self, image: np.ndarray) -> tuple[torch.Tensor, T.TransformList]:
        """A single-channel stored image -> (C, H, W) float tensor for the model, and the transforms."""
        aug_input = T.AugInput(to_model_input(image, self.intensity_percentiles))
        transforms = self.augmentations(aug_input)
        return torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1))), transforms

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image(dataset_dict["file_name"])
        utils.check_image_size(dataset_dict, image)
        dataset_dict["image"], transforms = self.image_to_tensor(image)
        image_shape = tuple(dataset_dict["image"].shape[1:])
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        is_negative(dataset_dict)  # refuses a record without an annotations key, naming it
        self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict


class PairedDatasetMapper:
    """Maps a (positive record, negative record) pair to two model inputs with one image mapper.

    Refuses a pair whose first record has no box or whose second has one, naming the file.
    """

    def __init__(self, image_mapper: Callable[[dict], dict]) -> None:
        self.image_mapper = image_mapper

    def __call__(self, pair: tuple[dict, dict]) -> tuple[dict, dict]:
        positive, negative = pair
        if is_negative(positive):
            raise ValueError(f"{positive['file_name']}: expected a positive image (annotated), got no boxes")
        if not is_negative(negative):
            raise ValueError(f"{negative['file_name']}: expected a negative image, got a cancer box among its "
                             f"{len(negative['annotations'])} boxes")
        return self.image_mapper(positive), self.image_mapper(negative)
