"""A Grayscale Softcopy Presentation State per source image: the reported boxes as closed rectangles in the
source's pixel grid, each with its score as text, on named graphic layers.

Layers: ``MAMMO_TL`` holds a line saying what is shown (mammo_tl's version and which boxes are reported) and,
without an operating point, the boxes; with one, boxes above its threshold are on ``MAMMO_TL_RECALL`` (red)
and the others on ``MAMMO_TL_BELOW`` (amber). Coordinates are PIXEL units: 0,0 is the top left corner of
the top left pixel, as for the boxes in predictions.json.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import highdicom as hd
import numpy as np

from .dicom_common import (MANUFACTURER, NAME, PR_SERIES_NUMBER, add_contributing_equipment, box_tracking_uid,
                           closed_rectangle, derived_uid, reference_dataset, subject)

if TYPE_CHECKING:
    from pydicom import Dataset

    from .dicom_common import Algorithm

LAYER, RECALL_LAYER, BELOW_LAYER = "MAMMO_TL", "MAMMO_TL_RECALL", "MAMMO_TL_BELOW"
CONTENT_LABEL = "MAMMO_TL"
_RED, _AMBER, _WHITE = (255, 0, 0), (255, 200, 0), (255, 255, 255)


def box_label(score: float) -> str:
    """The text shown beside a box: the score as predictions.json holds it (5 decimals)."""
    return f"mass {score:.5f}"


def _label_box(box, text, rows, cols):
    """[left, top, right, bottom] of a box's label: just above it, or below it at the image's top edge."""
    x1, y1, _, y2 = (float(v) for v in box)
    th = max(8.0, rows / 60.0)
    tw = min(float(cols), th * 0.6 * len(text))
    if y1 - th >= 0:
        top = y1 - th
    elif y2 + th <= rows:
        top = y2
    else:
        top = 0.0
    left = min(x1, cols - tw)
    return [left, top, left + tw, min(float(rows), top + th)]


def presentation_state(header: Dataset, record: Mapping[str, Any], algorithm: Algorithm, series_uid: str,
                       instance_number: int) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """The GSPS of one image: ``header`` its DICOM header, ``record`` its prediction record, ``algorithm`` a
    :class:`~mammo_tl.outputs.dicom.Algorithm`."""
    threshold = algorithm.operating_point[1] if algorithm.operating_point else None
    ref = reference_dataset(header)
    rows, cols = int(ref.Rows), int(ref.Columns)
    boxes = np.asarray(record["boxes"], dtype=np.float64).reshape(-1, 4)
    scores = [float(s) for s in record["scores"]]
    layers = {LAYER: hd.pr.GraphicLayer(LAYER, 1, f"{NAME}: {algorithm.reported}",
                                        hd.color.CIELabColor.from_rgb(*_WHITE))}
    if threshold is not None:
        layers[RECALL_LAYER] = hd.pr.GraphicLayer(RECALL_LAYER, 2, f"{NAME}: boxes above {threshold:g} (recall)",
                                                  hd.color.CIELabColor.from_rgb(*_RED))
        layers[BELOW_LAYER] = hd.pr.GraphicLayer(BELOW_LAYER, 3, f"{NAME}: boxes at or below {threshold:g}",
                                                 hd.color.CIELabColor.from_rgb(*_AMBER))
    objects = {name: ([], []) for name in layers}
    for i, (box, s) in enumerate(zip(boxes, scores)):
        layer = LAYER if threshold is None else (RECALL_LAYER if s > threshold else BELOW_LAYER)
        tracking = dict(tracking_id=f"mass candidate {i + 1}",
                        tracking_uid=box_tracking_uid(header, i, box.tolist(), s, algorithm))
        objects[layer][0].append(hd.pr.GraphicObject(hd.pr.GraphicTypeValues.POLYLINE, closed_rectangle(box),
                                                     hd.pr.AnnotationUnitsValues.PIXEL, **tracking))
        text = box_label(s)
        objects[layer][1].append(hd.pr.TextObject(text, hd.pr.AnnotationUnitsValues.PIXEL,
                                                  bounding_box=_label_box(box, text, rows, cols),
                                                  text_justification=hd.pr.TextJustificationValues.LEFT))
    summary = f"{NAME} {algorithm.version}: {len(scores)} mass candidate(s), {algorithm.reported}"
    if threshold is not None:
        summary += f"; operating point {algorithm.operating_point[0]}: recall above {threshold:g}"
    objects[LAYER][1].insert(0, hd.pr.TextObject(summary, hd.pr.AnnotationUnitsValues.DISPLAY,
                                                 bounding_box=(0.01, 0.01, 0.99, 0.04),
                                                 text_justification=hd.pr.TextJustificationValues.LEFT))
    annotations = [hd.pr.GraphicAnnotation([ref], layers[name], graphic_objects=g or None, text_objects=t or None)
                   for name, (g, t) in objects.items() if g or t]
    photometric = str(ref.get("PhotometricInterpretation", ""))
    shape = (hd.PresentationLUTShapeValues.INVERSE if photometric == "MONOCHROME1"
             else hd.PresentationLUTShapeValues.IDENTITY)  # the image shown as its own viewer shows it
    content = json.dumps([boxes.tolist(), scores])
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[ref],
        series_instance_uid=series_uid,
        series_number=PR_SERIES_NUMBER,
        sop_instance_uid=derived_uid("PR", subject(header), content, algorithm.key()),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=NAME,
        software_versions=algorithm.version,
        device_serial_number=algorithm.serial_number,
        content_label=CONTENT_LABEL,
        content_description=f"{NAME} {algorithm.version} AI mass candidates, {algorithm.reported}"[:64],
        graphic_layers=[layers[name] for name, (g, t) in objects.items() if g or t],
        graphic_annotations=annotations,
        presentation_lut_transformation=hd.PresentationLUTTransformation(presentation_lut_shape=shape),
    )
    gsps.SeriesDescription = algorithm.series_description("boxes")
    return add_contributing_equipment(gsps, algorithm)
