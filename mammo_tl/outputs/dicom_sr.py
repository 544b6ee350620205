"""A TID 1500 measurement report (Comprehensive 3D SR) per study.

Per reported box a planar ROI group (TID 1410): the box as a closed POLYLINE image region on its source image
(referenced by SOP Instance UID), finding type mass (SCT 4147007), the breast and side as finding site when
known, and the box's score as a measurement, Certainty of Finding (DCM 111012), unitless in [0, 1] as in
predictions.json. An image without a reported box gets an image-level group (TID 1501) with the qualitative
evaluation Mass (SCT 4147007): Absent (SCT 272519000), meaning none at or above --min-score. Every group names
the algorithm (TID 4019): mammo_tl, its version, and as parameters the config, the weights' sha256, which boxes
are reported and the operating point, if any.
"""
import json

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes

from .dicom_common import (MANUFACTURER, NAME, SR_SERIES_NUMBER, box_tracking_uid, closed_rectangle, derived_uid,
                    reference_dataset)

SCORE = codes.DCM.CertaintyOfFinding
_SIDE_CODES = {"L": codes.SCT.Left, "R": codes.SCT.Right}


def measurement_report(images, algorithm, series_uid, instance_number):
    """The report of one study: ``images`` is [(DICOM header, prediction record)] of its predicted images,
    ``algorithm`` a :class:`~mammo_tl.outputs.dicom.Algorithm`."""
    refs = [reference_dataset(h) for h, _ in images]
    algorithm_id = hd.sr.AlgorithmIdentification(name=NAME, version=algorithm.version,
                                                 parameters=algorithm.parameters(), manufacturer=MANUFACTURER)
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=derived_uid("device", algorithm.weights_sha256, algorithm.config_name), name=NAME,
        manufacturer_name=MANUFACTURER, model_name=algorithm.config_name[:64], serial_number=algorithm.serial_number)
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))
    groups = []
    for n, ((header, record), ref) in enumerate(zip(images, refs), 1):
        side = record.get("laterality", "")
        sites = [hd.sr.FindingSite(codes.SCT.Breast, laterality=_SIDE_CODES[side])] if side in _SIDE_CODES else None
        boxes = np.asarray(record["boxes"], dtype=np.float64).reshape(-1, 4)
        scores = [float(s) for s in record["scores"]]
        for i, (box, s) in enumerate(zip(boxes, scores)):
            region = hd.sr.ImageRegion(hd.sr.GraphicTypeValues.POLYLINE, closed_rectangle(box),
                                       hd.sr.SourceImageForRegion.from_source_image(ref))
            tracking = hd.sr.TrackingIdentifier(uid=box_tracking_uid(header, i, box.tolist(), s, algorithm),
                                                identifier=f"mass candidate {i + 1} of image {n}")
            groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking, referenced_region=region, finding_type=codes.SCT.Mass,
                algorithm_id=algorithm_id, finding_sites=sites,
                measurements=[hd.sr.Measurement(SCORE, s, codes.UCUM.NoUnits)]))
        if not scores:
            tracking = hd.sr.TrackingIdentifier(uid=derived_uid("no box", str(header.SOPInstanceUID),
                                                                algorithm.key()),
                                                identifier=f"image {n}: no mass candidate, {algorithm.reported}")
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking, algorithm_id=algorithm_id, finding_sites=sites,
                qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.SCT.Mass, codes.SCT.Absent)],
                source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ref)]))
    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=codes.SCT.Mammography,
                                     imaging_measurements=groups)
    content = json.dumps([[str(h.SOPInstanceUID), r["boxes"], r["scores"]] for h, r in images])
    return hd.sr.Comprehensive3DSR(
        evidence=refs, content=report, series_instance_uid=series_uid, series_number=SR_SERIES_NUMBER,
        sop_instance_uid=derived_uid("SR", str(refs[0].StudyInstanceUID), content, algorithm.key()),
        instance_number=instance_number, manufacturer=MANUFACTURER, is_complete=True)
