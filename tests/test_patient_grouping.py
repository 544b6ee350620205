"""Patient-level evaluation groups patient ids the way the splits do: one person's id spelled two ways (case,
trailing space) is one patient, not two (one of which would look healthy)."""
from mammo_tl.evaluation.evaluators import group_scores, labels_from_records


def _record(image_id, patient_id, side, boxed):
    return {"image_id": image_id, "patient_id": patient_id, "laterality": side, "file_name": f"{image_id}.png",
            "annotations": [{"bbox": [1, 1, 5, 5]}] if boxed else []}


def test_spellings_of_one_id_are_one_patient():
    records = [_record(1, "P001", "L", True), _record(2, "p001 ", "R", False), _record(3, "P002", "L", False)]
    labels, group_of = labels_from_records(records)
    assert labels == {"P001": 1, "P002": 0}
    assert group_of == {1: "P001", 2: "P001", 3: "P002"}
    # the patient's score is its highest image score over both spellings
    assert group_scores({1: 0.2, 2: 0.9, 3: 0.4}, group_of, labels) == {"P001": 0.9, "P002": 0.4}
    breasts, _ = labels_from_records(records, ("patient_id", "laterality"))
    assert breasts == {"P001/L": 1, "P001/R": 0, "P002/L": 0}
