"""Small releases of CBIS-DDSM, VinDr-Mammo, INbreast and a hospital's own CSV, laid out exactly as each is
delivered (see datasets/README.md), with DICOMs like the real ones: 16-bit, uncompressed, RLE Lossless or
JPEG 2000, MONOCHROME1 where the source uses it, the real image shapes divided by 8, a bright breast against
the chest wall on a dark background, a brighter mass where a box is, and only the header tags the real files
carry. Every value is made up; only the formats are real.

Each ``make_*`` writes one release under ``root`` and returns the paths a user passes to the commands. What
each converter must keep or skip is listed in the function's docstring; the end-to-end tests count it by hand
from there.
"""
import hashlib
import os

import cv2
import numpy as np
from pydicom.uid import JPEG2000Lossless, RLELossless

from mammo_tl.data.synthetic import mammogram_dataset

CBIS_SHAPE = (584, 329)  # 4672 x 2632 / 8
VINDR_SHAPES = ((440, 350), (352, 252))  # 3518 x 2800 and 2812 x 2012, / 8
INBREAST_SHAPE = (510, 416)  # 4084 x 3328 / 8
HOSPITAL_SHAPE = (416, 320)  # 3328 x 2560 / 8


def mammogram(shape, side, masses=(), seed=0, max_value=4095, film_label=False):
    """uint16 image: the breast (a half ellipse against the chest wall on ``side``, "L" = left image edge)
    with smooth texture, a darker skin line and dark noisy background; each box of ``masses`` (x1, y1, x2, y2)
    holds a brighter elliptic mass filling it; ``film_label`` adds a bright label in a far corner, as on
    digitised film."""
    rows, cols = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    depth = xx if side == "L" else cols - 1 - xx
    r = np.sqrt((depth / (0.78 * cols)) ** 2 + ((yy - rows / 2) / (0.46 * rows)) ** 2)
    texture = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 6)
    texture = (texture - texture.min()) / max(float(np.ptp(texture)), 1e-6)
    img = 0.04 + 0.02 * rng.random(shape).astype(np.float32)
    breast = r <= 1
    img[breast] = (0.42 + 0.18 * texture - 0.12 * np.clip((r - 0.85) / 0.15, 0, 1))[breast]
    for x1, y1, x2, y2 in masses:
        cx, cy, ax, ay = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
        inside = ((xx + 0.5 - cx) / ax) ** 2 + ((yy + 0.5 - cy) / ay) ** 2 <= 1
        img[inside] += 0.35
    if film_label:
        lx = cols - 40 if side == "L" else 8
        img[10:26, lx:lx + 30] = 0.95
    return (np.clip(img, 0, 1) * max_value).astype(np.uint16)


def mass_mask(shape, box, scale=(1.0, 1.0)):
    """A CBIS-style ROI mask (0/255) of the elliptic mass filling ``box``, drawn on a grid of ``shape``
    whose pixels are ``scale`` = (sy, sx) times the image's."""
    sy, sx = scale
    x1, y1, x2, y2 = box
    cx, cy, ax, ay = (x1 + x2) / 2 * sx, (y1 + y2) / 2 * sy, (x2 - x1) / 2 * sx, (y2 - y1) / 2 * sy
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    return np.where(((xx + 0.5 - cx) / ax) ** 2 + ((yy + 0.5 - cy) / ay) ** 2 <= 1, 255, 0).astype(np.uint16)


def write_dicom(path, pixels, patient_id, *, laterality=None, view=None, photometric="MONOCHROME2",
                bits_stored=16, syntax=None, study_uid=None, series_uid=None):
    """A mammography DICOM with only the tags given: laterality/view None leaves ImageLaterality /
    ViewPosition out, as in CBIS-DDSM's files. MONOCHROME1 stores the pixels inverted."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.asarray(pixels, dtype=np.uint16)
    if photometric == "MONOCHROME1":
        pixels = ((1 << bits_stored) - 1 - pixels).astype(np.uint16)
    ds = mammogram_dataset(path, pixels, patient_id, laterality or "", view or "")
    if laterality is None:
        del ds.ImageLaterality
    if view is None:
        del ds.ViewPosition
    ds.PhotometricInterpretation = photometric
    ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
    if study_uid:
        ds.StudyInstanceUID = study_uid
    if series_uid:
        ds.SeriesInstanceUID = series_uid
    if syntax is not None:
        ds.compress(syntax)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def truncate(path, keep=0.6):
    """Cut a file inside its pixel data, as an interrupted download leaves it."""
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:int(len(data) * keep)])


# ----------------------------------------------------------------------------------------------- CBIS-DDSM
MASS_HEADER = ("patient_id,breast_density,left or right breast,image view,abnormality id,abnormality type,"
               "mass shape,mass margins,assessment,pathology,subtlety,image file path,cropped image file path,"
               "ROI mask file path")
NBIA_METADATA_HEADER = ("Series UID,Collection,3rd Party Analysis,Data Description URI,Subject ID,Study UID,"
                        "Study Description,Study Date,Series Description,Manufacturer,Modality,SOP Class Name,"
                        "SOP Class UID,Number of Images,File Size,File Location,Download Timestamp")

# (patient, side, view, split, [(pathology, roi), ...], full-image quirk)
# roi: "crop-first" / "mask-first" (1-1/1-2 order in one series), "two-series", "empty-mask", "small-mask"
CBIS_IMAGES = [
    ("P_00001", "LEFT", "CC", "Training", [("MALIGNANT", "crop-first")], None),
    ("P_00001", "LEFT", "MLO", "Training", [("MALIGNANT", "mask-first")], None),
    ("P_00002", "RIGHT", "CC", "Training", [("MALIGNANT", "mask-first"), ("BENIGN", "crop-first")], "rle"),
    ("P_00002", "RIGHT", "MLO", "Training", [("MALIGNANT", "two-series")], None),
    ("P_00003", "LEFT", "CC", "Training", [("BENIGN", "crop-first")], None),
    ("P_00003", "LEFT", "MLO", "Training", [("BENIGN_WITHOUT_CALLBACK", "mask-first")], None),
    ("P_00004", "RIGHT", "CC", "Training", [("BENIGN", "crop-first")], None),
    ("P_00004", "RIGHT", "MLO", "Training", [("BENIGN", "two-series")], None),
    ("P_00005", "RIGHT", "CC", "Training", [("MALIGNANT", "empty-mask")], None),
    ("P_00006", "LEFT", "MLO", "Training", [("BENIGN", "crop-first")], "not-downloaded"),
    ("P_00007", "LEFT", "CC", "Test", [("MALIGNANT", "small-mask")], None),
    ("P_00007", "LEFT", "MLO", "Test", [("MALIGNANT", "crop-first")], "rle"),
    ("P_00008", "RIGHT", "CC", "Test", [("BENIGN", "mask-first")], None),
    ("P_00008", "RIGHT", "MLO", "Test", [("BENIGN", "crop-first")], None),
    ("P_00009", "LEFT", "CC", "Test", [("BENIGN", "crop-first")], "truncated"),
]


def _nbia_file(manifest, metadata, subject, date, study, series, desc, name):
    """Path of a file in the NBIA Data Retriever's layout; its series is listed in ``metadata`` (metadata.csv)."""
    folder = os.path.join(manifest, "CBIS-DDSM", subject, f"{date}-DDSM-NA-{study[-5:]}",
                          f"1.000000-{desc}-{series[-5:]}")
    if not any(row.startswith(series + ",") for row in metadata):
        metadata.append(f"{series},CBIS-DDSM,NO,https://doi.org/10.7937/K9/TCIA.2016.7O02S9CY,{subject},{study},"
                        f"DDSM,{date},{desc},,MG,Secondary Capture Image Storage,1.2.840.10008.5.1.4.1.1.7,1,"
                        f"1.00 MB,./CBIS-DDSM/{os.path.relpath(folder, os.path.join(manifest, 'CBIS-DDSM'))},"
                        "2021-03-22T12:00:00.000")
    return os.path.join(folder, name)


class _Uids:
    """CBIS-like UIDs whose last five digits (NBIA's folder suffixes) differ."""

    def __init__(self):
        self.n = 0

    def __call__(self):
        self.n += 1
        return f"1.3.6.1.4.1.9590.100.1.2.{31415926535 + 977 * self.n}{self.n:05d}"


def make_cbis_release(root):
    """CBIS-DDSM as TCIA delivers it: ``root/CBIS-DDSM/manifest-<id>/CBIS-DDSM/<Subject>/<date>-DDSM-NA-<n>/
    1.000000-<series description>-<n>/1-1.dcm`` (NBIA Data Retriever layout, ``metadata.csv`` beside) and the
    two mass case-description CSVs in ``root`` (CRLF, quoted ROI path ending in a newline, NA).

    Mass images (:data:`CBIS_IMAGES`), 15 full mammograms in the CSVs:

    * kept by the converter (13): P_00001 L CC/MLO, P_00002 R CC/MLO, P_00007 L CC/MLO malignant (6 positive
      images, 3 patients; P_00007 L CC's mask is stored smaller and rescaled; P_00002 R CC has a second,
      benign finding); P_00003, P_00004, P_00008 CC/MLO benign (6 negative images, 3 patients); P_00009 L CC
      benign, whose DICOM is cut inside its pixel data;
    * skipped by the converter (2): P_00005 R CC (all-zero mask), P_00006 L MLO (not downloaded);
    * skipped when preparing (1): P_00009 L CC (pixel data truncated).

    Returns dict(root, csv=[train CSV, test CSV], test_subjects=[folders of the Mass-Test full mammograms]).
    """
    uid = _Uids()
    images_root = os.path.join(root, "CBIS-DDSM")
    manifest = os.path.join(images_root, "manifest-1600000000000")
    rows = {"Training": [], "Test": []}
    metadata = []
    test_subjects = []
    rows_, cols_ = CBIS_SHAPE
    for k, (patient, side, view, split, findings, quirk) in enumerate(CBIS_IMAGES):
        subject = f"Mass-{split}_{patient}_{side}_{view}"
        date = "07-20-2016" if split == "Training" else "08-29-2017"
        lat = side[0]
        # one mass per finding, one above the other, well inside the breast
        boxes = []
        for j, _ in enumerate(findings):
            x0 = int(0.22 * cols_) + 9 * j
            x1 = x0 if lat == "L" else cols_ - x0 - 40
            y1 = int(0.34 * rows_) + 120 * j
            boxes.append((x1, y1, x1 + 40 + 4 * (k % 3), y1 + 36 + 3 * (k % 4)))
        full = mammogram(CBIS_SHAPE, lat, boxes, seed=100 + k, max_value=65535, film_label=True)

        def nbia_path(subj, study, series, desc, name="1-1.dcm", date=date):
            return _nbia_file(manifest, metadata, subj, date, study, series, desc, name)

        study, series = uid(), uid()
        full_csv = f"{subject}/{study}/{series}/000000.dcm"
        if quirk != "not-downloaded":
            path = nbia_path(subject, study, series, "full mammogram images")
            write_dicom(path, full, subject, syntax=RLELossless if quirk == "rle" else None,
                        study_uid=study, series_uid=series)
            if quirk == "truncated":
                truncate(path)
            if split == "Test":
                test_subjects.append(os.path.dirname(os.path.dirname(os.path.dirname(path))))
        for j, ((pathology, roi), box) in enumerate(zip(findings, boxes), start=1):
            roi_subject = f"{subject}_{j}"
            roi_study, crop_series = uid(), uid()
            mask_series = uid() if roi == "two-series" else crop_series
            x1, y1, x2, y2 = box
            crop = full[max(0, y1 - 10):y2 + 10, max(0, x1 - 10):x2 + 10]
            if roi == "empty-mask":
                mask = np.zeros(CBIS_SHAPE, np.uint16)
            elif roi == "small-mask":
                small = (int(rows_ * 0.87), int(cols_ * 0.82))
                mask = mass_mask(small, box, scale=(small[0] / rows_, small[1] / cols_))
            else:
                mask = mass_mask(CBIS_SHAPE, box)
            if roi == "two-series":
                write_dicom(nbia_path(roi_subject, roi_study, crop_series, "cropped images"), crop, roi_subject,
                            study_uid=roi_study, series_uid=crop_series)
                write_dicom(nbia_path(roi_subject, roi_study, mask_series, "ROI mask images"), mask, roi_subject,
                            study_uid=roi_study, series_uid=mask_series)
                crop_csv = f"{roi_subject}/{roi_study}/{crop_series}/000000.dcm"
                mask_csv = f"{roi_subject}/{roi_study}/{mask_series}/000000.dcm"
            else:
                first, second = (crop, mask) if roi != "mask-first" else (mask, crop)
                for name, px in (("1-1.dcm", first), ("1-2.dcm", second)):
                    write_dicom(nbia_path(roi_subject, roi_study, crop_series, "ROI mask images", name), px,
                                roi_subject, study_uid=roi_study, series_uid=crop_series)
                crop_csv = f"{roi_subject}/{roi_study}/{crop_series}/000000.dcm"
                mask_csv = f"{roi_subject}/{roi_study}/{crop_series}/000001.dcm"
            shape, margins = ("IRREGULAR-ARCHITECTURAL_DISTORTION", "SPICULATED") if pathology == "MALIGNANT" \
                else ("OVAL", "NA" if k % 2 else "CIRCUMSCRIBED")
            assessment = 4 if pathology == "MALIGNANT" else 3
            density = "NA" if k == 3 else str(1 + k % 4)
            rows[split].append(f"{patient},{density},{side},{view},{j},mass,{shape},{margins},{assessment},"
                               f'{pathology},{1 + k % 5},{full_csv},{crop_csv},"{mask_csv}\n"')
    with open(os.path.join(manifest, "metadata.csv"), "w", newline="") as f:
        f.write("\r\n".join([NBIA_METADATA_HEADER] + metadata) + "\r\n")
    csvs = []
    for split, name in (("Training", "mass_case_description_train_set.csv"),
                        ("Test", "mass_case_description_test_set.csv")):
        path = os.path.join(root, name)
        with open(path, "w", newline="") as f:
            f.write("\r\n".join([MASS_HEADER] + rows[split]) + "\r\n")
        csvs.append(path)
    return {"root": images_root, "csv": csvs, "test_subjects": sorted(test_subjects)}


# --------------------------------------------------------------------------------------------- VinDr-Mammo
VINDR_HEADER = ("study_id,series_id,image_id,laterality,view_position,height,width,breast_birads,breast_density,"
                "finding_categories,finding_birads,xmin,ymin,xmax,ymax,split")

# study -> (split, shape index, {(side, view): [finding rows (categories, BI-RADS, box)]}); no entry: No Finding
VINDR_STUDIES = {
    "a1": ("training", 0, {("R", "CC"): [("['Mass']", 4, (240.25, 150.5, 282.75, 196.0))],
                           ("R", "MLO"): [("['Mass']", 4, (236.0, 170.0, 280.5, 214.25))]}),
    "b2": ("training", 1, {}),
    "c3": ("training", 0, {("L", "CC"): [("['Mass']", 3, (60.0, 200.0, 100.0, 236.0))],
                           ("L", "MLO"): [("['Suspicious Calcification']", 4, (70.0, 180.0, 90.0, 200.0))]}),
    "d4": ("training", 0, {("L", "MLO"): [("['Suspicious Calcification', 'Mass']", 5,
                                           (-3.1262, 190.25, 44.5, 236.0))]}),
    "e5": ("test", 0, {("R", "CC"): [("['Mass']", 5, (300.0, 160.0, 350.4, 204.0))]}),
    "f6": ("test", 1, {}),
}
VINDR_MISSING = ("f6", "L", "MLO")


def _hex(name, what):
    """A 32-hex id like VinDr's, the same on every run."""
    return hashlib.md5(f"{name}/{what}".encode()).hexdigest()


def make_vindr_release(root):
    """VinDr-Mammo as PhysioNet delivers it: ``root/images/<study_id>/<image_id>.dicom`` (JPEG 2000,
    MONOCHROME1, 12 bits) and ``root/finding_annotations.csv`` (LF; one row per box; one ['No Finding'] row
    with empty BI-RADS and box per normal image), 6 studies of 4 images (:data:`VINDR_STUDIES`):

    * training: a1 (positive: R CC, R MLO masses BI-RADS 4), b2 (normal), c3 (L CC benign mass BI-RADS 3 ->
      negative; L MLO BI-RADS 4 calcification only -> skipped), d4 (L MLO mass + calcification BI-RADS 5,
      box starting left of the image, clipped);
    * test: e5 (R CC mass BI-RADS 5, box ending past the image, clipped), f6 (normal; L MLO listed but not
      downloaded -> skipped).

    Converter: 24 images listed, 22 kept, 2 skipped. Official split: training 15 images (4 positive), 4
    patients (2 positive); test 7 images (1 positive), 2 patients (1 positive).
    Returns dict(root, test_studies=[image folders of the test studies that exist]).
    """
    rows, test_dirs = [], []
    for n, (study, (split, shape_index, findings)) in enumerate(VINDR_STUDIES.items()):
        study_id = _hex(study, "study")
        h, w = VINDR_SHAPES[shape_index]
        for side in ("L", "R"):
            for view in ("CC", "MLO"):
                image_id = _hex(study, side + view)
                found = findings.get((side, view), [])
                masses = [tuple(max(0.0, min(v, lim)) for v, lim in zip(box, (w, h, w, h)))
                          for cats, _, box in found if "Mass" in cats]
                breast = "BI-RADS " + str(max([b for _, b, _ in found], default=1))
                density = "DENSITY " + "ABCD"[n % 4]
                series_id = _hex(study, side + view + "series")
                base = f"{study_id},{series_id},{image_id},{side},{view},{h},{w},{breast},{density}"
                if not found:
                    rows.append(f"{base},['No Finding'],,,,,,{split}")
                for cats, birads, box in found:
                    cats_csv = f'"{cats}"' if "," in cats else cats
                    rows.append(f"{base},{cats_csv},BI-RADS {birads},{','.join(str(v) for v in box)},{split}")
                if (study, side, view) == VINDR_MISSING:
                    continue
                px = mammogram((h, w), side, [tuple(round(v) for v in m) for m in masses],
                               seed=len(rows) * 7 + len(study), max_value=4095)
                path = os.path.join(root, "images", study_id, image_id + ".dicom")
                write_dicom(path, px, study_id, laterality=side, view=view, photometric="MONOCHROME1",
                            bits_stored=12, syntax=JPEG2000Lossless)
        if split == "test":
            test_dirs.append(os.path.join(root, "images", study_id))
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "finding_annotations.csv"), "w", newline="") as f:
        f.write("\n".join([VINDR_HEADER] + rows) + "\n")
    return {"root": root, "test_studies": test_dirs}


# ------------------------------------------------------------------------------------------------ INbreast
PLIST = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
	<key>Images</key>
	<array>
		<dict>
			<key>ImageHeight</key>
			<integer>{h}</integer>
			<key>ImageIndex</key>
			<integer>0</integer>
			<key>ImageWidth</key>
			<integer>{w}</integer>
			<key>NumberOfROIs</key>
			<integer>{n}</integer>
			<key>ROIs</key>
			<array>{rois}
			</array>
		</dict>
	</array>
</dict>
</plist>
"""
ROI = """
				<dict>
					<key>Area</key>
					<real>{area:.4f}</real>
					<key>Center</key>
					<string>({cx:.6f}, {cy:.6f}, 0.000000)</string>
					<key>IndexInImage</key>
					<integer>{k}</integer>
					<key>Name</key>
					<string>{name}</string>
					<key>NumberOfPoints</key>
					<integer>{npts}</integer>
					<key>Point_mm</key>
					<array>{mm}
					</array>
					<key>Point_px</key>
					<array>{px}
					</array>
					<key>Type</key>
					<integer>{type}</integer>
				</dict>"""

# File Name -> (patient hash, side, view, Bi-Rads, [(ROI name, box or point)]) ; None: no XML file
INBREAST_IMAGES = {
    "20586908": ("6c613a14b80a8591", "R", "CC", "4c", [("Mass", (250, 200, 300, 246)), ("Calcification", (270, 150))]),
    "20586934": ("6c613a14b80a8591", "R", "MLO", "4c", [("Mass", (246, 230, 298, 280))]),
    "22614236": ("8d3e1d58ab3c57c1", "L", "CC", "5", [("Mass", (110, 190, 170, 250))]),
    "22614266": ("8d3e1d58ab3c57c1", "L", "MLO", "5", [("Mass", (100, 220, 162, 276))]),
    "22614379": ("8d3e1d58ab3c57c1", "R", "CC", "5", None),
    "24055274": ("2d7e4b1c09f3a6e5", "L", "CC", "1", None),
    "24055309": ("2d7e4b1c09f3a6e5", "L", "MLO", "1", [("Calcification", (120, 200))]),
    "50996352": ("a3b7c9d1e5f70812", "R", "CC", "2", [("Mass", (280, 260, 310, 290))]),
    "50996406": ("a3b7c9d1e5f70812", "R", "MLO", "3", None),
    "50994300": ("f00dfeed12345678", "L", "FB", "2", None),
}


def _roi_xml(k, name, geom):
    if len(geom) == 4:  # a polygon around an ellipse filling the box
        x1, y1, x2, y2 = geom
        t = np.linspace(0, 2 * np.pi, 12, endpoint=False)
        pts = [((x1 + x2) / 2 + (x2 - x1) / 2 * np.cos(a), (y1 + y2) / 2 + (y2 - y1) / 2 * np.sin(a)) for a in t]
        kind = 15
    else:
        pts, kind = [geom], 19
    px = "".join(f"\n\t\t\t\t\t\t<string>({x:.6f}, {y:.6f})</string>" for x, y in pts)
    mm = "".join(f"\n\t\t\t\t\t\t<string>({x * 0.07:.6f}, {y * 0.07:.6f}, 0.000000)</string>" for x, y in pts)
    cx, cy = np.mean([p[0] for p in pts]), np.mean([p[1] for p in pts])
    return ROI.format(area=len(pts) * 1.5, cx=cx, cy=cy, k=k, name=name, npts=len(pts), mm=mm, px=px, type=kind)


def make_inbreast_release(root):
    """INbreast as released: ``AllDICOMs/<File Name>_<patient hash>_MG_<L|R>_<view>_ANON.dcm`` (14 bits,
    RLE), ``AllXML/<File Name>.xml`` (OsiriX plists), ``INbreast.csv`` (semicolons, CRLF,
    Patient ID/age "removed", Bi-Rads like 4c), 10 images of 5 patients (:data:`INBREAST_IMAGES`):

    * kept (8): 6c61.. R CC/MLO BI-RADS 4c masses, 8d3e.. L CC/MLO BI-RADS 5 masses (4 positive images,
      2 patients); 2d7e.. L CC/MLO BI-RADS 1 (one XML with a calcification only), a3b7.. R CC BI-RADS 2 with a
      benign mass outline (removed) and R MLO BI-RADS 3 (4 negative images, 2 patients);
    * skipped (2): 8d3e.. R CC BI-RADS 5 without XML, f00d.. view FB.

    Returns dict(root, dicoms=the AllDICOMs folder).
    """
    os.makedirs(os.path.join(root, "AllDICOMs"), exist_ok=True)
    os.makedirs(os.path.join(root, "AllXML"), exist_ok=True)
    os.makedirs(os.path.join(root, "AllROI"), exist_ok=True)
    os.makedirs(os.path.join(root, "MedicalReports"), exist_ok=True)
    rows = []
    for k, (fname, (patient, side, view, birads, rois)) in enumerate(INBREAST_IMAGES.items()):
        h, w = INBREAST_SHAPE
        masses = [g for name, g in rois or [] if name == "Mass"]
        px = mammogram(INBREAST_SHAPE, side, masses, seed=300 + k, max_value=(1 << 14) - 1)
        write_dicom(os.path.join(root, "AllDICOMs", f"{fname}_{patient}_MG_{side}_{view}_ANON.dcm"), px, patient,
                    laterality=side, view=view, bits_stored=14, syntax=RLELossless)
        if rois is not None:
            with open(os.path.join(root, "AllXML", f"{fname}.xml"), "w", newline="\n") as f:
                f.write(PLIST.format(h=h, w=w, n=len(rois), rois="".join(_roi_xml(i, n, g) for i, (n, g) in
                                                                      enumerate(rois))))
        acr = "" if k == 9 else str(1 + k % 4)
        rows.append(f"removed;removed;{side};{view};2009{1 + k % 9:02d};{fname};{acr or ' ' * 12};{birads}")
    with open(os.path.join(root, "INbreast.csv"), "w", newline="") as f:
        f.write("\r\n".join(["Patient ID;Patient age;Laterality;View;Acquisition date;File Name;ACR;Bi-Rads"] + rows)
                + "\r\n")
    return {"root": root, "dicoms": os.path.join(root, "AllDICOMs")}


# -------------------------------------------------------------------------------------- a hospital's CSV
# patient -> [(side, view, boxes or "no-box" (label 1 without boxes) or "missing" (file not delivered))]
HOSPITAL = {
    "H001": [("L", "CC", [(60, 150, 104, 196)]), ("L", "MLO", [(66, 170, 110, 214)])],
    "H002": [("R", "CC", [(220, 120, 262, 160), (200, 240, 236, 276)]), ("R", "MLO", [])],
    "H003": [("L", "CC", [(70, 210, 116, 250)]), ("L", "MLO", "no-box")],
    "H004": [("L", "CC", []), ("R", "CC", [])],
    "H005": [("R", "CC", []), ("R", "MLO", []), ("L", "MLO", "missing")],
    "H006": [("L", "CC", []), ("L", "MLO", [])],
}


def make_hospital_release(root):
    """A hospital's export: ``root/scans/<patient>/<patient>_<side>_<view>.dcm`` (JPEG 2000 and RLE, with
    laterality/view tags) and ``root/mammograms.csv`` in the format of datasets/README.md
    (:data:`HOSPITAL`):

    * 13 rows; kept (11): 4 positive images (H001 L CC/MLO, H002 R CC with two boxes, H003 L CC) and
      7 negative ones (H002 R MLO, H004, H005 and H006 two each); 3 positive patients (H001-H003), 3 negative
      (H004-H006);
    * skipped (2): H003 L MLO (label 1 without boxes), H005 L MLO (listed, file not delivered).

    Returns dict(root, csv, scans={patient: folder}).
    """
    lines = ["patient_id,path,laterality,view,label,boxes"]
    scans = {}
    for k, (patient, images) in enumerate(HOSPITAL.items()):
        folder = os.path.join(root, "scans", patient)
        scans[patient] = folder
        for j, (side, view, boxes) in enumerate(images):
            rel = f"scans/{patient}/{patient}_{side}_{view}.dcm"
            side_csv = {"L": "LEFT", "R": "RIGHT"}[side] if k % 2 else side  # both spellings occur
            if boxes == "no-box":
                lines.append(f"{patient},{rel},{side_csv},{view},1,")
                boxes = []  # noqa: PLW2901  (a label-1 row without boxes: the image has none)
            elif boxes == "missing":
                lines.append(f"{patient},{rel},{side_csv},{view},0,")
                continue
            else:
                cell = "; ".join(" ".join(str(v) for v in b) for b in boxes)
                lines.append(f"{patient},{rel},{side_csv},{view},{int(bool(boxes))},{cell}")
            px = mammogram(HOSPITAL_SHAPE, side, boxes, seed=500 + 10 * k + j, max_value=(1 << 12) - 1)
            write_dicom(os.path.join(root, rel), px, patient, laterality=side, view=view, bits_stored=12,
                        syntax=JPEG2000Lossless if j % 2 else RLELossless)
    path = os.path.join(root, "mammograms.csv")
    with open(path, "w", newline="") as f:
        f.write("\n".join(lines) + "\n")
    return {"root": root, "csv": path, "scans": scans}
