"""Small trees in the real on-disk formats of CBIS-DDSM, VinDr-Mammo and INbreast (made-up values)."""
import os

import numpy as np
from pydicom.uid import JPEG2000Lossless, RLELossless

from tests.dicom_fixtures import make_dicom

H, W = 80, 60
MASS_HEADER = ("patient_id,breast_density,left or right breast,image view,abnormality id,abnormality type,"
               "mass shape,mass margins,assessment,pathology,subtlety,image file path,cropped image file path,"
               "ROI mask file path")
CALC_HEADER = ("patient_id,breast density,left or right breast,image view,abnormality id,abnormality type,"
               "calc type,calc distribution,assessment,pathology,subtlety,image file path,cropped image file path,"
               "ROI mask file path")


def _full(seed):
    return (np.random.default_rng(seed).random((H, W)) * 3000 + 500).astype(np.uint16)


def _mask(shape, box):
    m = np.zeros(shape, np.uint16)
    x1, y1, x2, y2 = box
    m[y1:y2, x1:x2] = 255
    return m


def _crop(seed):
    return (np.random.default_rng(seed).random((12, 9)) * 3000 + 100).astype(np.uint16)


def _uid(n):
    return f"1.3.6.1.4.1.9590.100.1.2.{n}"


def _uid_layout(root, subject, study, series, name):
    d = os.path.join(root, subject, study, series)
    os.makedirs(d, exist_ok=True)
    return os.path.join(d, name)


def _nbia_layout(root, subject, study, series, desc, name):
    d = os.path.join(root, "manifest-123", "CBIS-DDSM", subject, f"07-20-2016-DDSM-NA-{study[-5:]}",
                     f"1.000000-{desc}-{series[-5:]}")
    os.makedirs(d, exist_ok=True)
    return os.path.join(d, name)


def make_cbis(root):
    """Returns (mass_csv, calc_csv, expected) for a tree holding:

    P_00001 LEFT CC   malignant mass, UID layout, crop 000000 + mask 000001 in one series -> box (15, 10, 30, 20)
    P_00002 RIGHT MLO benign (+ a benign-without-callback) -> negative image, NBIA layout
    P_00003 LEFT MLO  malignant, NBIA layout, 1-1 = mask (half size, rescaled), 1-2 = crop, JPEG 2000 full image
    P_00004 RIGHT CC  malignant with an all-zero mask -> skipped
    P_00005 LEFT CC   calc, malignant, crop and mask in two different series, RLE full image
    """
    os.makedirs(root, exist_ok=True)
    rows_mass, rows_calc = [], []

    # P_00001: UID layout
    s1 = "Mass-Training_P_00001_LEFT_CC"
    full = f"{s1}/{_uid(111)}/{_uid(222)}/000000.dcm"
    roi_dir = (f"{s1}_1", _uid(333), _uid(444))
    make_dicom(_uid_layout(root, s1, _uid(111), _uid(222), "000000.dcm"), _full(1), patient_id=s1)
    make_dicom(_uid_layout(root, *roi_dir, "000000.dcm"), _crop(1), patient_id=f"{s1}_1")
    make_dicom(_uid_layout(root, *roi_dir, "000001.dcm"), _mask((H, W), (15, 10, 30, 20)), patient_id=f"{s1}_1")
    crop = f"{s1}_1/{_uid(333)}/{_uid(444)}/000000.dcm"
    mask = f"{s1}_1/{_uid(333)}/{_uid(444)}/000001.dcm"
    rows_mass.append(f'P_00001,3,LEFT,CC,1,mass,IRREGULAR-ARCHITECTURAL_DISTORTION,SPICULATED,4,MALIGNANT,4,'
                     f'{full},{crop},"{mask}\n"')

    # P_00002: benign, NBIA layout; masks never needed
    s2 = "Mass-Training_P_00002_RIGHT_MLO"
    make_dicom(_nbia_layout(root, s2, _uid(1000055555), _uid(1000066666), "full mammogram images", "1-1.dcm"),
               _full(2), patient_id=s2, laterality="R", view="MLO")
    full2 = f"{s2}/{_uid(1000055555)}/{_uid(1000066666)}/000000.dcm"
    for k, path in ((1, "BENIGN"), (2, "BENIGN_WITHOUT_CALLBACK")):
        roi = f"{s2}_{k}/{_uid(1000077777 + k)}/{_uid(1000088888 + k)}/000001.dcm"
        rows_mass.append(f'P_00002,2,RIGHT,MLO,{k},mass,OVAL,CIRCUMSCRIBED,3,{path},3,{full2},'
                         f'{roi.replace("000001", "000000")},"{roi}\n"')

    # P_00003: NBIA layout, mask first (1-1), mask at half resolution, JPEG 2000 full image
    s3 = "Mass-Training_P_00003_LEFT_MLO"
    make_dicom(_nbia_layout(root, s3, _uid(2000011111), _uid(2000022222), "full mammogram images", "1-1.dcm"),
               _full(3), patient_id=s3, view="MLO", syntax=JPEG2000Lossless, bits_stored=12)
    roi_args = (f"{s3}_1", _uid(2000033333), _uid(2000044444))
    make_dicom(_nbia_layout(root, *roi_args, "ROI mask images", "1-1.dcm"), _mask((H // 2, W // 2), (5, 6, 10, 16)),
               patient_id=f"{s3}_1")
    make_dicom(_nbia_layout(root, *roi_args, "ROI mask images", "1-2.dcm"), _crop(3), patient_id=f"{s3}_1")
    full3 = f"{s3}/{_uid(2000011111)}/{_uid(2000022222)}/000000.dcm"
    roi3 = f"{s3}_1/{_uid(2000033333)}/{_uid(2000044444)}"
    rows_mass.append(f'P_00003,NA,LEFT,MLO,1,mass,IRREGULAR,NA,5,MALIGNANT,5,{full3},{roi3}/000000.dcm,'
                     f'"{roi3}/000001.dcm\n"')

    # P_00004: all-zero mask
    s4 = "Mass-Training_P_00004_RIGHT_CC"
    make_dicom(_uid_layout(root, s4, _uid(511), _uid(522), "000000.dcm"), _full(4), patient_id=s4, laterality="R")
    make_dicom(_uid_layout(root, f"{s4}_1", _uid(533), _uid(544), "000000.dcm"), _crop(4), patient_id=f"{s4}_1")
    make_dicom(_uid_layout(root, f"{s4}_1", _uid(533), _uid(544), "000001.dcm"), np.zeros((H, W), np.uint16),
               patient_id=f"{s4}_1")
    rows_mass.append(f'P_00004,1,RIGHT,CC,1,mass,ROUND,OBSCURED,4,MALIGNANT,2,{s4}/{_uid(511)}/{_uid(522)}/000000.dcm,'
                     f'{s4}_1/{_uid(533)}/{_uid(544)}/000000.dcm,"{s4}_1/{_uid(533)}/{_uid(544)}/000001.dcm\n"')

    # P_00005: calc, crop and mask in two different series (each one 000000.dcm), RLE full image
    s5 = "Calc-Training_P_00005_LEFT_CC"
    make_dicom(_uid_layout(root, s5, _uid(611), _uid(622), "000000.dcm"), _full(5), patient_id=s5, syntax=RLELossless,
               bits_stored=12)
    make_dicom(_uid_layout(root, f"{s5}_1", _uid(633), _uid(644), "000000.dcm"), _crop(5), patient_id=f"{s5}_1")
    make_dicom(_uid_layout(root, f"{s5}_1", _uid(655), _uid(666), "000000.dcm"), _mask((H, W), (40, 50, 45, 60)),
               patient_id=f"{s5}_1")
    rows_calc.append(f'P_00005,0,LEFT,CC,1,calcification,PLEOMORPHIC,NA,4,MALIGNANT,3,'
                     f'{s5}/{_uid(611)}/{_uid(622)}/000000.dcm,"{s5}_1/{_uid(633)}/{_uid(644)}/000000.dcm\n",'
                     f'{s5}_1/{_uid(655)}/{_uid(666)}/000000.dcm')

    mass_csv = os.path.join(root, "mass_case_description_train_set.csv")
    calc_csv = os.path.join(root, "calc_case_description_train_set.csv")
    for path, header, rows in ((mass_csv, MASS_HEADER, rows_mass), (calc_csv, CALC_HEADER, rows_calc)):
        with open(path, "w", newline="") as f:
            f.write("\r\n".join([header] + rows) + "\r\n")
    expected = {
        "Mass-Training_P_00001_LEFT_CC": ("P_00001", "L", "CC", [[15, 10, 30, 20]]),
        "Mass-Training_P_00002_RIGHT_MLO": ("P_00002", "R", "MLO", []),
        "Mass-Training_P_00003_LEFT_MLO": ("P_00003", "L", "MLO", [[10, 12, 20, 32]]),
        "Calc-Training_P_00005_LEFT_CC": ("P_00005", "L", "CC", [[40, 50, 45, 60]]),
    }
    return mass_csv, calc_csv, expected


VINDR_HEADER = ("study_id,series_id,image_id,laterality,view_position,height,width,breast_birads,breast_density,"
                "finding_categories,finding_birads,xmin,ymin,xmax,ymax,split")


def make_vindr(root):
    """Images: a (Mass BI-RADS 4, one box), b (multi-label Calc+Mass BI-RADS 5, box with negative x, clipped),
    c (No Finding -> negative), d (benign Mass BI-RADS 3 -> negative, box removed),
    e (Suspicious Calcification BI-RADS 4 only -> skipped), f (test split, No Finding)."""
    study = "s" * 32
    rows = [
        f"{study},x,{'a' * 32},R,CC,{H},{W},BI-RADS 4,DENSITY C,['Mass'],BI-RADS 4,10.5,20.25,30.0,40.75,training",
        f"{study},x,{'b' * 32},L,CC,{H},{W},BI-RADS 5,DENSITY C,\"['Suspicious Calcification', 'Mass']\",BI-RADS 5,"
        f"-6.25,5.0,18.0,25.0,training",
        f"{study},x,{'c' * 32},L,MLO,{H},{W},BI-RADS 1,DENSITY B,['No Finding'],,,,,,training",
        f"{study},x,{'d' * 32},R,MLO,{H},{W},BI-RADS 3,DENSITY B,['Mass'],BI-RADS 3,5,5,15,15,training",
        f"{'t' * 32},x,{'e' * 32},R,CC,{H},{W},BI-RADS 4,DENSITY A,['Suspicious Calcification'],BI-RADS 4,"
        f"1,1,9,9,training",
        f"{'u' * 32},x,{'f' * 32},L,CC,{H},{W},BI-RADS 1,DENSITY A,['No Finding'],,,,,,test",
    ]
    with open(os.path.join(root, "finding_annotations.csv"), "w", newline="") as f:
        f.write("\n".join([VINDR_HEADER] + rows) + "\n")
    for r in rows:
        study_id, _, image_id = r.split(",")[:3]
        d = os.path.join(root, "images", study_id)
        os.makedirs(d, exist_ok=True)
        make_dicom(os.path.join(d, image_id + ".dicom"), _full(7), photometric="MONOCHROME1", patient_id=study_id)


PLIST = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0"><dict><key>Images</key><array><dict><key>ImageIndex</key><integer>0</integer>
<key>NumberOfROIs</key><integer>{n}</integer><key>ROIs</key><array>{rois}</array></dict></array></dict></plist>"""
ROI = """<dict><key>IndexInImage</key><integer>{k}</integer><key>Name</key><string>{name}</string>
<key>NumberOfPoints</key><integer>{n}</integer><key>Point_px</key><array>{pts}</array></dict>"""


def make_inbreast(root):
    """20586908 BI-RADS 4a with a Mass outline and a Calcification dot; 20586909 BI-RADS 2 with a Mass
    outline (removed: negative); 20586910 view FB (skipped); 20586911 BI-RADS 5 without XML (skipped)."""
    os.makedirs(os.path.join(root, "AllDICOMs"), exist_ok=True)
    os.makedirs(os.path.join(root, "AllXML"), exist_ok=True)
    rows = ["removed;removed;R;CC;200902;20586908;2;4a", "removed;removed;L;MLO;200902;20586909;1;2",
            "removed;removed;L;FB;200902;20586910;1;1", "removed;removed;R;MLO;200902;20586911;3;5"]
    with open(os.path.join(root, "INbreast.csv"), "w", newline="") as f:
        f.write("\r\n".join(["Patient ID;Patient age;Laterality;View;Acquisition date;File Name;ACR;Bi-Rads"] + rows)
                + "\r\n")
    for fname, lat, view in (("20586908", "R", "CC"), ("20586909", "L", "MLO"), ("20586910", "L", "FB"),
                             ("20586911", "R", "MLO")):
        make_dicom(os.path.join(root, "AllDICOMs", f"{fname}_6c613a14b80a8591_MG_{lat}_{view}_ANON.dcm"), _full(9),
                   laterality=lat, view=view)

    def roi(k, name, pts):
        return ROI.format(k=k, name=name, n=len(pts), pts="".join(f"<string>({x}, {y})</string>" for x, y in pts))

    with open(os.path.join(root, "AllXML", "20586908.xml"), "w") as f:
        f.write(PLIST.format(n=2, rois=roi(0, "Mass", [(20.5, 30.25), (35, 32), (28, 45)])
                             + roi(1, "Calcification", [(5, 5)])))
    with open(os.path.join(root, "AllXML", "20586909.xml"), "w") as f:
        f.write(PLIST.format(n=1, rois=roi(0, "Mass", [(10, 10), (20, 10), (15, 20)])))
