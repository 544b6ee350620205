"""The DICOM outputs where a radiologist looks: OHIF Viewer (its built app, npm @ohif/app, pinned in
tests/viewer/install.sh) over Orthanc's DICOMweb, in headless Chromium (driven by tests/viewer/open_report.mjs).

A four-view study, one view without a box: the report opens without an error, every box is listed in the
measurement panel and drawn on its image, and the series list says what the PR and SR series are."""
import json
import os
import re
import shutil
import subprocess

import pydicom
import pytest
from pydicom.uid import generate_uid

from mammo_tl import __version__
from mammo_tl.outputs.dicom import Algorithm, write_dicom_outputs
from tests.common import breast_phantom
from tests.dicom_fixtures import make_dicom
from tests.pacs import Orthanc, require

VIEWER = os.path.join(os.path.dirname(__file__), "viewer")
# the version tests/viewer/install.sh installs
OHIF_VERSION = re.search(r"^OHIF_VERSION=(\S+)$", open(os.path.join(VIEWER, "install.sh")).read(), re.M).group(1)
DIST = os.path.join(VIEWER, f"ohif-app-{OHIF_VERSION}", "dist")
INSTALL = ("Debian/Ubuntu: apt-get install -y --no-install-recommends chromium orthanc orthanc-dicomweb dcmtk "
           "nodejs npm, then bash tests/viewer/install.sh; .ci/run does both")
# what the viewer says when it cannot use a report: the error boundary, and the SR adapter's warning
FAILURES = ("Something went wrong", "Error Boundary", "Unable to generate tool state", "No spatial coordinates",
            "ReferencedSOPSequence")

pytestmark = pytest.mark.slow


def _require_viewer():
    for what in ("chromium", "node", os.path.join(DIST, "index.html"),
                 os.path.join(VIEWER, "node_modules", "playwright-core", "package.json")):
        require(what, how=INSTALL)


# side, view and boxes [x1, y1, x2, y2] as fractions of the image, per view; R MLO has none
VIEWS = [("L", "CC", [(0.2, 0.3, 0.5, 0.6), (0.55, 0.1, 0.8, 0.25)]), ("L", "MLO", [(0.3, 0.4, 0.6, 0.7)]),
         ("R", "CC", [(0.25, 0.2, 0.45, 0.5)]), ("R", "MLO", [])]


def test_ohif_lists_and_draws_every_box_of_a_four_view_study(tmp_path):
    _require_viewer()
    study = generate_uid()
    records, sources = [], []
    for i, (side, view, boxes) in enumerate(VIEWS):
        path = make_dicom(tmp_path / f"{side}{view}.dcm", breast_phantom(seed=i), study_uid=study,
                          series_uid=generate_uid(), laterality=side, view=view)
        ds = pydicom.dcmread(path)
        w, h = ds.Columns, ds.Rows
        records.append({"file_name": str(path), "laterality": side, "view": view,
                        "boxes": [[x1 * w, y1 * h, x2 * w, y2 * h] for x1, y1, x2, y2 in boxes],
                        "scores": [0.9 - 0.1 * k for k in range(len(boxes))]})
        sources.append(str(path))
    out = tmp_path / "dicom"
    out.mkdir()
    algorithm = Algorithm("paper/full.yaml", "ab" * 32, 0.05, ("youden", 0.5))
    _, summary = write_dicom_outputs(str(out), [(r, f"n{i}") for i, r in enumerate(records)], algorithm)
    assert (summary["reports"], summary["presentation_states"]) == (1, 4)

    pacs = Orthanc(tmp_path / "orthanc").start()
    try:
        storescu = require("storescu", "dcmtk")
        subprocess.run([storescu, "-R", "127.0.0.1", str(pacs.dicom_port), *sources,
                        *(str(out / n) for n in sorted(os.listdir(out)))], check=True, capture_output=True, timeout=60)
        assert len(pacs.instances()) == 4 + 4 + 1
        shots = tmp_path / "screenshots"
        run = subprocess.run([shutil.which("node"), os.path.join(VIEWER, "open_report.mjs"), "--dist", DIST,
                              "--dicomweb", pacs.dicomweb, "--study", study, "--out", str(shots),
                              "--chromium", shutil.which("chromium"), "--timeout", "40"],
                             capture_output=True, text=True, timeout=150)
    finally:
        pacs.stop()
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout)
    where = f"(screenshots in {shots})"
    assert "error" not in seen, seen["error"] + where
    assert not seen["tourShown"]
    assert not seen.get("noTrackingPrompt"), "the viewer did not offer to track the report's measurements " + where
    text = seen["bodyText"] + "\n".join(c["text"] for c in seen["console"]) + "\n".join(seen["pageErrors"])
    assert not [f for f in FAILURES if f in text], [c for c in seen["console"] if any(f in c["text"] for f in
                                                                                     FAILURES)]
    assert not seen["pageErrors"] and not [c for c in seen["console"] if c["type"] == "error"], \
        (seen["pageErrors"], seen["console"])
    # opened, the report's boxes on the first image are labelled with their scores
    assert "Certainty of Finding: 0.90" in seen["previewText"], (seen["previewText"], where)
    # every box listed: "Measurements (4)", one row each, as "Mass"
    boxes = [len(b) for _, _, b in VIEWS]
    assert seen["measurementsTitle"] == sum(boxes) == 4, where
    assert [r.split()[1] for r in seen["rows"]] == ["Mass"] * 4, seen["rows"]
    # and drawn: each row shows its image with as many rectangles as that image has boxes
    assert sorted(seen["shapesPerRow"]) == sorted(n for n in boxes for _ in range(n)), (seen["shapesPerRow"], where)
    # the series list names the results
    assert f"PR AI boxes: mammo_tl {__version__} full abababab S:9900 4" in seen["thumbnails"], seen["thumbnails"]
    assert f"SR AI report: mammo_tl {__version__} full abababab S:9901 1" in seen["thumbnails"], seen["thumbnails"]
