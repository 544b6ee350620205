"""A TID 1500 measurement report (Comprehensive 3D SR) per study.

Per reported box a planar ROI group (TID 1410): the box as a closed POLYLINE image region on its source image
(referenced by SOP Instance UID), finding type mass (SCT 4147007), the breast and side as finding site when
known, and the box's score as a measurement, Certainty of Finding (DCM 111012), unitless in [0, 1] as in
predictions.json. The measurement also holds the region, by INFERRED FROM (TID 300 / TID 320), as the reports
OHIF Viewer exports do: its reader takes a group's first measurement and lists it only with a region inside it.
Every group names the algorithm (TID 4019): mammo_tl, its version, and as parameters the config, the weights'
sha256, which boxes are reported and the operating point, if any.

An image without a reported box has no group: a box below --min-score is not a clinical negative, and a group
without a region makes OHIF Viewer fail on the whole report. Every predicted image is in the Image Library
(TID 1600) and the evidence, and the Qualitative Evaluations container holds one text saying which boxes are
reported (the threshold, the operating point) and which images have none at or above it. A study without any
box gets no report (:func:`measurement_report` refuses it): OHIF Viewer fails on a report without measurements,
and the presentation states already say that no box is at or above the threshold.

A later report of a study can name the earlier ones it replaces in its Predecessor Documents Sequence.

Speed: building every group with highdicom, letting it re-parse the tree, and encoding that tree with pydicom
took about 10 ms per box, minutes for thousands. So highdicom builds the report from one group per image
(evidence, patient, study, observation context), and the groups of all boxes are encoded from the first box's
group, encoded once with holes where a box's own values go (tracking identifier and UID, score, rectangle).
The holes are found in highdicom's encoding, and the result checked against highdicom's own groups of the
second and last box; where either differs (another highdicom), highdicom builds every group of that image.
Groups are written with undefined lengths (PS3.5 7.5), which readers accept as they do defined ones.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import highdicom as hd
import numpy as np
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, write_data_element, write_sequence_item
from pydicom.sr.codedict import codes
from pydicom.tag import Tag
from pydicom.valuerep import DS
from tqdm import tqdm

from .dicom_common import (MANUFACTURER, NAME, SR_SERIES_NUMBER, add_contributing_equipment, box_tracking_uid,
                           closed_rectangle, derived_uid, reference_dataset, subject)

if TYPE_CHECKING:
    from pydicom import Dataset

    from .dicom_common import Algorithm

SCORE = codes.DCM.CertaintyOfFinding
_SIDE_CODES = {"L": codes.SCT.Left, "R": codes.SCT.Right}
# A progress bar for reports with at least this many boxes.
PROGRESS_BOXES = 1000
_CONTENT_SEQUENCE = Tag(0x0040, 0xA730)
_TEXT_VALUE, _UID, _FLOATING_POINT_VALUE = Tag(0x0040, 0xA160), Tag(0x0040, 0xA124), Tag(0x0040, 0xA161)
_NUMERIC_VALUE, _GRAPHIC_DATA = Tag(0x0040, 0xA30A), Tag(0x0070, 0x0022)
# how often each of a box's own values occurs in its group: the rectangle twice (the group's region, and the
# same region under the measurement), the others once
_OCCURRENCES = MappingProxyType({(_GRAPHIC_DATA, "FL"): 2})
_IMAGING_MEASUREMENTS = "126010"  # DCM "Imaging Measurements", the container of the groups
SOURCE = hd.sr.CodedConcept("260753009", "SCT", "Source")  # an Image Library entry's concept name (TID 1601)
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")  # TID 1500 row 12


def _fp():
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    return fp


class _Image:
    """What the groups of one image's boxes share: the source reference, its finding sites, its index."""

    def __init__(self, header, record, ref, n, algorithm, algorithm_id):
        self.header, self.record, self.n, self.algorithm, self.algorithm_id = header, record, n, algorithm, algorithm_id
        side = record.get("laterality", "")
        self.sites = [hd.sr.FindingSite(codes.SCT.Breast, laterality=_SIDE_CODES[side])] if side in _SIDE_CODES \
            else None
        self.source = hd.sr.SourceImageForRegion.from_source_image(ref)
        self.ref = ref
        self.boxes = np.asarray(record["boxes"], dtype=np.float64).reshape(-1, 4)
        self.scores = [float(s) for s in record["scores"]]

    def identifier(self, i: int) -> str:
        return f"mass candidate {i + 1} of image {self.n}"

    def group(self, i: int) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
        """Box ``i``'s planar ROI group (TID 1410), built by highdicom."""
        box, s = self.boxes[i], self.scores[i]
        tracking = hd.sr.TrackingIdentifier(uid=box_tracking_uid(self.header, i, box.tolist(), s, self.algorithm),
                                            identifier=self.identifier(i))
        region = hd.sr.ImageRegion(hd.sr.GraphicTypeValues.POLYLINE, closed_rectangle(box), self.source)
        group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, referenced_region=region, finding_type=codes.SCT.Mass,
            algorithm_id=self.algorithm_id, finding_sites=self.sites,
            measurements=[hd.sr.Measurement(SCORE, s, codes.UCUM.NoUnits)])
        _region_in_measurement(group[0])
        return group


def _region_in_measurement(container):
    """Put a copy of the group's image region (SCOORD) under its measurement (NUM), INFERRED FROM, as TID 300
    allows (TID 320) and OHIF Viewer's reader looks for it; the group keeps its own (TID 1410 asks for it)."""
    import copy

    (region,) = [item for item in container.ContentSequence if item.ValueType == "SCOORD"]
    (num,) = [item for item in container.ContentSequence if item.ValueType == "NUM"]
    inferred = copy.deepcopy(region)
    inferred.RelationshipType = "INFERRED FROM"
    num.ContentSequence = [*num.get("ContentSequence", []), inferred]


def _undefined_lengths(ds):
    """Mark every sequence and item under ``ds`` to be written with undefined length: an element's encoding
    then no longer depends on what surrounds it, so one value can be replaced by another of other length."""
    for elem in ds:
        if elem.VR == "SQ":
            elem.is_undefined_length = True
            for item in elem.value:
                item.is_undefined_length_sequence_item = True
                _undefined_lengths(item)
    return ds


def _encode_group(group_item, encodings) -> bytes:
    """A group container as an item of undefined length, its sequences and items also so."""
    group_item.is_undefined_length_sequence_item = True
    fp = _fp()
    write_sequence_item(fp, _undefined_lengths(group_item), encodings)
    return fp.getvalue()


def _encode_element(tag, vr, value, encodings) -> bytes:
    fp = _fp()
    write_data_element(fp, DataElement(tag, vr, value), encodings)
    return fp.getvalue()


class _Layout:
    """An image's box group encoded once, with holes where a box's own values go: its tracking identifier
    and UID, its score (as Floating Point Value and Numeric Value) and its rectangle (Graphic Data).
    None from :meth:`of` when highdicom's groups do not fit it (then highdicom builds every group)."""

    def __init__(self, image, encodings, parts):
        self.image, self.encodings, self.parts = image, encodings, parts

    def values(self, i: int) -> dict[tuple[int, str], Any]:
        """{(tag, VR): value} of box ``i``, as highdicom sets them (TextContentItem, UIDRefContentItem,
        NumContentItem, ScoordContentItem)."""
        im, box, s = self.image, self.image.boxes[i], self.image.scores[i]
        return {(_TEXT_VALUE, "UT"): im.identifier(i),
                (_UID, "UI"): box_tracking_uid(im.header, i, box.tolist(), s, im.algorithm),
                (_FLOATING_POINT_VALUE, "FD"): s, (_NUMERIC_VALUE, "DS"): DS(s, auto_format=True),
                (_GRAPHIC_DATA, "FL"): closed_rectangle(box).flatten().tolist()}

    @classmethod
    def of(cls, image: _Image, encodings: str | Sequence[str]) -> _Layout | None:
        layout = cls(image, encodings, None)
        encoded = _encode_group(image.group(0)[0], encodings)
        holes = []
        for key, value in layout.values(0).items():
            element = _encode_element(*key, value, encodings)
            if encoded.count(element) != _OCCURRENCES.get(key, 1):
                return None
            at = -1
            for _ in range(_OCCURRENCES.get(key, 1)):
                at = encoded.index(element, at + 1)
                holes.append((at, len(element), key))
        parts, at = [], 0
        for start, length, key in sorted(holes):
            parts += [encoded[at:start], key]
            at = start + length
        layout.parts = parts + [encoded[at:]]
        # checked against highdicom's own groups of the second and the last box
        for i in sorted({1, len(image.scores) - 1} & set(range(1, len(image.scores)))):
            if layout.encode(i) != _encode_group(image.group(i)[0], encodings):
                return None
        return layout

    def encode(self, i: int) -> bytes:
        values = self.values(i)
        return b"".join(p if isinstance(p, bytes) else _encode_element(*p, values[p], self.encodings)
                        for p in self.parts)


def measurement_report(images: Sequence[tuple[Dataset, Mapping[str, Any]]], algorithm: Algorithm, series_uid: str,
                       instance_number: int, previous: Sequence[Dataset] = ()) -> hd.sr.Comprehensive3DSR:
    """The report of one study: ``images`` is [(DICOM header, prediction record)] of its predicted images,
    ``algorithm`` a :class:`~mammo_tl.outputs.dicom.Algorithm`; ``previous``: the earlier reports of the study
    this one replaces (their Study, Series, SOP Class and SOP Instance UIDs), named in its Predecessor Documents
    Sequence."""
    refs = [reference_dataset(h) for h, _ in images]
    algorithm_id = hd.sr.AlgorithmIdentification(name=NAME, version=algorithm.version,
                                                 parameters=algorithm.parameters(), manufacturer=MANUFACTURER)
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=algorithm.device_uid, name=NAME,
        manufacturer_name=MANUFACTURER, model_name=algorithm.config_name[:64], serial_number=algorithm.serial_number)
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))
    per_image = [_Image(h, r, ref, n, algorithm, algorithm_id) for n, ((h, r), ref) in enumerate(zip(images, refs), 1)]
    # the report as highdicom builds it, with each image's first group: evidence, patient, study, context
    firsts = [im.group(0) for im in per_image if im.scores]
    if not firsts:
        raise ValueError("a report needs a box: no image of the study has one (write_dicom_outputs makes no report "
                         "for such a study)")
    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=codes.SCT.Mammography,
                                     imaging_measurements=firsts)
    sr = hd.sr.Comprehensive3DSR(
        evidence=refs, content=report, series_instance_uid=series_uid, series_number=SR_SERIES_NUMBER,
        sop_instance_uid=report_uid(images, algorithm),
        instance_number=instance_number, manufacturer=MANUFACTURER, is_complete=True,
        previous_versions=list(previous) or None)
    sr.SeriesDescription = algorithm.series_description("report")
    at = next(i for i, item in enumerate(sr.ContentSequence)
              if item.ConceptNameCodeSequence[0].CodeValue == _IMAGING_MEASUREMENTS)
    sr.ContentSequence.insert(at, _image_library(refs))
    sr.ContentSequence.append(_statement(per_image, algorithm))
    add_contributing_equipment(sr, algorithm)
    if all(len(im.scores) <= 1 for im in per_image):
        return sr
    _add_every_group(sr, per_image)
    return sr


def report_uid(images: Sequence[tuple[Dataset, Mapping[str, Any]]], algorithm: Algorithm) -> str:
    """The report's SOP Instance UID: a function of what it says (patient, study, series, images, boxes, scores)
    and of the model. Not of its predecessors: writing the same findings again gives the same report."""
    return derived_uid("SR", json.dumps([[subject(h), r["boxes"], r["scores"]] for h, r in images]),
                       algorithm.key())


def image_name(record: Mapping[str, Any], n: int) -> str:
    """How the report's text names an image: its side and view when known, and its number in the report."""
    view = " ".join(v for v in (record.get("laterality"), record.get("view")) if v)
    return f"image {n}" + (f" ({view})" if view else "")


def _image_library(refs):
    """The Image Library (TID 1600) listing every predicted image, with or without a box (TID 1601, without
    the optional descriptors of TID 1602, which many sources cannot fill)."""
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    group = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibraryGroup, relationship_type=contains)
    group.ContentSequence = hd.sr.ContentSequence([hd.sr.ImageContentItem(
        name=SOURCE, referenced_sop_class_uid=str(ref.SOPClassUID),
        referenced_sop_instance_uid=str(ref.SOPInstanceUID), relationship_type=contains) for ref in refs])
    library = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibrary, relationship_type=contains)
    library.ContentSequence = hd.sr.ContentSequence([group])
    return library


def _statement(per_image, algorithm):
    """The Qualitative Evaluations container (TID 1500) with one text: which boxes are reported and which images
    have none at or above that score, said as a threshold decision rather than a finding of normal."""
    without = [image_name(im.record, im.n) for im in per_image if not im.scores]
    boxes = sum(len(im.scores) for im in per_image)
    text = (f"{NAME} {algorithm.version} ({algorithm.config_name}, weights sha256 "
            f"{(algorithm.weights_sha256 or 'unknown')[:16]}): {boxes} mass candidate(s) in "
            f"{len(per_image) - len(without)} of {len(per_image)} image(s), {algorithm.threshold_text}.")
    if without:
        text += (f" No mass candidate at or above that score in {', '.join(without)}: a score below the threshold, "
                 "not a finding of normal.")
    container = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS,
                                           relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    container.ContentSequence = hd.sr.ContentSequence([hd.sr.TextContentItem(
        name=codes.DCM.Comment, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)])
    return container


def _add_every_group(sr, per_image):
    """Replace the Imaging Measurements container's groups in ``sr`` by those of every box, encoded."""
    correct_ambiguous_vr(sr, True)  # what pydicom's writer does, done before the groups are bytes it must not parse
    encodings = sr._character_set
    (container,) = [item for item in sr.ContentSequence
                    if item.ConceptNameCodeSequence[0].CodeValue == _IMAGING_MEASUREMENTS]
    total = sum(len(im.scores) for im in per_image)
    groups = []
    with tqdm(total=total, desc="DICOM report", unit="box", disable=total < PROGRESS_BOXES, leave=False) as bar:
        for im in per_image:
            if not im.scores:
                continue
            layout = _Layout.of(im, encodings)
            for i in range(len(im.scores)):
                groups.append(layout.encode(i) if layout else _encode_group(im.group(i)[0], encodings))
                bar.update()
    container[_CONTENT_SEQUENCE] = RawDataElement(_CONTENT_SEQUENCE, "SQ", 0xFFFFFFFF, b"".join(groups), 0, False,
                                                  True)
    # the writer then takes the encoded groups as they are, rather than parsing them to check them again
    container.set_original_encoding(False, True, container._character_set)
    sr.set_original_encoding(False, True, encodings)
