"""The phantom's generative model (docs/phantom.md), measured from its pixels, and the difficulty figures
(mammo_tl.data.phantom_difficulty) computed on hand-made results."""
import csv
import dataclasses
import json
import math
import os
import runpy
import subprocess
import sys
from collections import Counter

import cv2
import numpy as np
import pytest

from mammo_tl.data import synthetic as S
from mammo_tl.data.records import validate_records
from mammo_tl.experiments.difficulty import (format_summary, lesion_breakdown, lesion_cnr, lookalike_cost,
                                                operating_point, run_figures)
from mammo_tl.evaluation.metrics import froc, patient_metrics

SPEC = S.SyntheticSpec()  # the demo's image size: room for a 128-pixel patch of tissue


def _skin_distance(img):
    """Distance to the skin line of each pixel, from the pixels alone (breast: above 5% of the range; the
    image's side edges count as inside, as the chest wall does)."""
    breast = (img > 0.05 * S.MAX_VALUE).astype(np.uint8)
    padded = cv2.copyMakeBorder(breast, 0, 0, 8, 8, cv2.BORDER_REPLICATE)
    return cv2.distanceTransform(padded, cv2.DIST_L2, 5)[:, 8:-8]


def _deepest_patch(dist, n):
    """Top-left corner of the n x n patch farthest from the skin."""
    best = (-1.0, 0, 0)
    for y in range(0, dist.shape[0] - n + 1, 8):
        for x in range(0, dist.shape[1] - n + 1, 8):
            best = max(best, (float(dist[y:y + n, x:x + n].min()), y, x))
    return best[1], best[2]


def _spectral_slope(region, n=64, band=(3 / 64, 1 / 6)):
    """-slope of log power vs log radial frequency: Welch average of n x n tiles (half overlap), each with
    its best-fitting plane removed and a Hann window (so the steep low frequencies do not leak into the
    band), radially averaged, fitted over ``band`` (cycles/pixel; below it the tile's few lowest bins, above
    it the quantum noise) with numpy.polyfit."""
    win = np.outer(np.hanning(n), np.hanning(n))
    yy, xx = np.mgrid[0:n, 0:n]
    plane = np.c_[np.ones(n * n), xx.ravel(), yy.ravel()]

    def detrended(t):
        coef = np.linalg.lstsq(plane, t.ravel(), rcond=None)[0]
        return t - (plane @ coef).reshape(n, n)

    tiles = [region[y:y + n, x:x + n] for y in range(0, region.shape[0] - n + 1, n // 2)
             for x in range(0, region.shape[1] - n + 1, n // 2)]
    power = np.mean([np.abs(np.fft.fft2(detrended(t) * win)) ** 2 for t in tiles], axis=0)
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n), indexing="ij"))
    freqs = np.arange(2, n // 2) / n
    freqs = freqs[(freqs >= band[0]) & (freqs <= band[1])]
    radial = [power[np.abs(f - q) < 0.5 / n].mean() for q in freqs]
    return -np.polyfit(np.log(freqs), np.log(radial), 1)[0]


def test_power_law_noise_has_the_asked_spectrum():
    rng = np.random.default_rng(0)
    for beta in (2.5, 3.0, 3.5):
        field = S.power_law_noise(rng, (256, 256), beta, anisotropy=0.7, angle=0.3)
        assert abs(field.mean()) < 1e-4 and abs(field.std() - 1) < 1e-4
        assert abs(_spectral_slope(field, band=(1 / 16, 1 / 4)) - beta) < 0.15


def test_tissue_spectrum_follows_the_drawn_beta():
    """Inside the breast of a lesion-free image, the radially averaged power spectrum falls as 1/f^beta with
    the beta drawn for that image, in every density category."""
    rng = np.random.default_rng(7)
    drawn, measured = [], []
    for k, beta in enumerate(np.linspace(2.5, 3.5, 8)):
        density = S.DENSITY_CATEGORIES[k % 4]
        out = S.render_image(rng, SPEC, "LR"[k % 2], "CC", density=density,
                             glandular_fraction=float(rng.uniform(*S.GLANDULAR_FRACTION[density])), beta=float(beta))
        assert out.beta == beta
        img = out.image.astype(np.float64) / S.MAX_VALUE
        y, x = _deepest_patch(_skin_distance(out.image), 128)
        drawn.append(beta)
        measured.append(_spectral_slope(img[y:y + 128, x:x + 128]))
    err = np.array(measured) - np.array(drawn)
    assert np.all(np.abs(err) < 0.3), err
    assert np.mean(np.abs(err)) < 0.15
    assert np.corrcoef(drawn, measured)[0, 1] > 0.8


def test_density_categories_order_the_glandular_fraction():
    """The share of the breast's interior brighter than midway between fat and gland, measured on the
    pixels, rises A < B < C < D and follows the drawn glandular fraction."""
    rng = np.random.default_rng(3)
    threshold = (S.FAT_LEVEL + S.GLAND_LEVEL) / 2 * S.MAX_VALUE
    means, drawn, measured = [], [], []
    for density in S.DENSITY_CATEGORIES:
        shares = []
        for k in range(5):
            gf = float(rng.uniform(*S.GLANDULAR_FRACTION[density]))
            out = S.render_image(rng, SPEC, "LR"[k % 2], "CC", density=density, glandular_fraction=gf, beta=3.0)
            interior = _skin_distance(out.image) > 20
            shares.append(float(np.mean(out.image[interior] > threshold)))
            drawn.append(gf)
        measured += shares
        means.append(np.mean(shares))
    assert all(a < b for a, b in zip(means, means[1:])), means
    assert np.corrcoef(drawn, measured)[0, 1] > 0.9
    assert np.max(np.abs(np.array(measured) - np.array(drawn))) < 0.25


def _lesion_signal(spec, les, density, seed, view="CC"):
    """(rendered, what the lesion adds to the pixels): the same image drawn with and without lesions."""
    masses, lookalikes = ([les], ()) if les["class"] == "malignant" else ((), [les])
    on, off = (S.render_image(np.random.default_rng(seed), spec, "R", view, masses, lookalikes, 0, density, None, 3.0,
                              draw_lesions=d) for d in (True, False))
    return on, on.image.astype(np.float64) - off.image.astype(np.float64)


def test_dense_tissue_masks_lesions():
    """The same mass adds less to the pixels in a dense breast than in a fatty one."""
    spec = SPEC
    added = {}
    for density in ("A", "D"):
        values = []
        for seed in range(6):
            les = dict(S.draw_lesion(np.random.default_rng(seed), spec, True, "circumscribed"), contrast=0.15)
            on, diff = _lesion_signal(spec, les, density, seed)
            x1, y1, x2, y2 = (round(v) for v in on.masses[0]["box"])
            values.append(diff[y1:y2, x1:x2].max() / (les["contrast"] * S.MAX_VALUE))
        added[density] = float(np.mean(values))
    assert 0.85 < added["A"] <= 1.01  # fatty: nearly the full contrast
    assert added["D"] < 0.75 * added["A"]  # dense: masked
    assert added["D"] > (1 - spec.masking) - 0.01  # never below what masking leaves


def test_every_malignant_box_encloses_its_mass():
    """The mass itself (what the lesion adds, above half its peak, thin spicules opened away) lies inside its
    box, and the box is no larger than the lesion's faint footprint; every margin, in both views."""
    spec = dataclasses.replace(SPEC, masking=0.0)  # an unmasked lesion: its signal is its profile
    element = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    checked = Counter()
    for seed in range(8):
        rng = np.random.default_rng(100 + seed)
        masses = [S.draw_lesion(rng, spec, True, S.MALIGNANT_MARGINS[(seed + j) % 4]) for j in range(2)]
        outs = [S.render_image(np.random.default_rng(seed), spec, "LR"[seed % 2], ("CC", "MLO")[seed // 4], masses,
                               [S.draw_lesion(rng, spec, False)], 1, "ABCD"[seed % 4], None, 3.0, draw_lesions=d)
                for d in (True, False)]
        diff = outs[0].image.astype(np.float64) - outs[1].image.astype(np.float64)
        for m in outs[0].masses:
            x1, y1, x2, y2 = m["box"]
            cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
            peak = m["contrast"] * S.MAX_VALUE
            body = cv2.morphologyEx((diff > 0.5 * peak).astype(np.uint8), cv2.MORPH_OPEN, element)
            _, labels = cv2.connectedComponents(body)
            assert labels[cy, cx] > 0, m["kind"]
            ys, xs = np.nonzero(labels == labels[cy, cx])
            assert x1 - 1 <= xs.min() and xs.max() + 1 <= x2 + 1 and y1 - 1 <= ys.min() and ys.max() + 1 <= y2 + 1, \
                (m["kind"], m["box"], (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
            _, faint = cv2.connectedComponents((diff > 0.1 * peak).astype(np.uint8))
            ys, xs = np.nonzero(faint == faint[cy, cx])
            assert xs.min() - 1 <= x1 and x2 <= xs.max() + 2 and ys.min() - 1 <= y1 and y2 <= ys.max() + 2
            checked[m["kind"]] += 1
    assert set(checked) == set(S.MALIGNANT_MARGINS)


def test_circumscribed_cancer_looks_like_a_benign_mass():
    """The classes overlap by construction: a circumscribed cancer and a benign oval mass of the same size,
    contrast and outline draw the same pixels."""
    les = S.draw_lesion(np.random.default_rng(5), SPEC, True, "circumscribed")
    les["shape"] = "oval"
    benign = dict(les, **{"class": "benign", "kind": "oval"})
    a, _ = _lesion_signal(SPEC, les, "B", 11)
    b, _ = _lesion_signal(SPEC, benign, "B", 11)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.masses[0]["box"] == b.lookalikes[0]["box"]


def test_lesion_classes_overlap():
    rng = np.random.default_rng(0)
    malignant = [S.draw_lesion(rng, SPEC, True) for _ in range(3000)]
    benign = [S.draw_lesion(rng, SPEC, False) for _ in range(3000)]
    margins = Counter(m["kind"] for m in malignant)
    assert set(margins) == set(S.MALIGNANT_MARGINS)
    assert abs(margins["circumscribed"] / len(malignant) - SPEC.circumscribed_fraction) < 0.03
    assert set(Counter(m["kind"] for m in benign)) == set(S.LOOKALIKE_KINDS)
    # shapes and margins shared by both classes
    shared = {(m["shape"], m["margin"]) for m in malignant} & {(m["shape"], m["margin"]) for m in benign}
    assert {("oval", "circumscribed"), ("round", "circumscribed")} <= shared
    for key in ("radius", "contrast"):
        lo_m, hi_m = min(m[key] for m in malignant), max(m[key] for m in malignant)
        lo_b, hi_b = min(m[key] for m in benign), max(m[key] for m in benign)
        overlap = min(hi_m, hi_b) - max(lo_m, lo_b)
        assert overlap > 0.5 * (hi_m - lo_m) and overlap > 0.5 * (hi_b - lo_b), key
    # overlapping, but cancers denser on average (class_contrast_shift)
    assert np.mean([m["contrast"] for m in malignant]) > np.mean([m["contrast"] for m in benign]) + 0.02
    with pytest.raises(ValueError, match="not one of"):
        S.draw_lesion(rng, SPEC, True, "oval")


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("phantom"))
    S.generate(root, S.SyntheticSpec(num_positive_patients=6, num_negative_patients=6, seed=3, height=192, width=160,
                                     min_radius=9.0, max_radius=13.0, calcification_prob=0.5), progress=False)
    return root


def test_records_carry_the_phantom_truth(small_set):
    records = S.load_synthetic(small_set)
    validate_records([dict(r, annotations=list(r["annotations"])) for r in records], "again")
    truth = S.load_phantom_truth(small_set)
    assert set(truth) == {r["image_id"] for r in records}
    with open(os.path.join(small_set, "patients.csv")) as f:
        density = {p["patient_id"]: p["density"] for p in csv.DictReader(f)}
    for r in records:
        t = truth[r["image_id"]]
        assert t["density"] == density[r["patient_id"]] and t["patient_id"] == r["patient_id"]
        lo, hi = S.GLANDULAR_FRACTION[t["density"]]
        assert lo <= t["glandular_fraction"] <= hi and S.BETA_RANGE[0] <= t["beta"] <= S.BETA_RANGE[1]
        masses = [les for les in t["lesions"] if les["class"] == "malignant"]
        assert [les["box"] for les in masses] == [a["bbox"] for a in r["annotations"]]
        assert t["mass_margins"] == [les["margin"] for les in masses]
        looks = [les for les in t["lesions"] if les["class"] == "benign"]
        assert t["lookalike_boxes"] == [les["box"] for les in looks]
        assert t["lookalike_kinds"] == [les["kind"] for les in looks]
        assert set(t["lookalike_kinds"]) <= set(S.LOOKALIKE_KINDS)
        assert len(looks) <= 1  # a breast holds a look-alike with probability lookalike_prob, at most one
    # every view of a breast shows the same findings, each placed anew
    by_breast = {}
    for r in records:
        by_breast.setdefault((r["patient_id"], r["laterality"]), []).append(truth[r["image_id"]])
    for views in by_breast.values():
        kinds = {tuple(les["kind"] for les in t["lesions"]) for t in views}
        assert len(kinds) == 1
    assert any(t["calcification_boxes"] for t in truth.values())


def test_phantom_statistics_see_the_lesions(small_set):
    from mammo_tl.experiments.difficulty import phantom_statistics

    stats = phantom_statistics(small_set)
    assert stats["malignant"]["n"] > 0 and stats["benign"]["n"] > 0
    assert stats["malignant"]["mean"] > 0.3 and stats["benign"]["mean"] > 0.3


def test_lesion_cnr_by_hand():
    rng = np.random.default_rng(0)
    image = 0.5 + 0.05 * rng.standard_normal((101, 101))
    yy, xx = np.mgrid[0:101, 0:101]
    image[(xx - 50) ** 2 + (yy - 50) ** 2 <= 10 ** 2] += 0.1  # contrast 0.1 over noise 0.05: CNR 2
    cnr = lesion_cnr(image, [40, 40, 61, 61], np.zeros(image.shape, bool))
    assert abs(cnr - 2.0) < 0.25


def _froc_by_hand():
    """Three images. 1: a mass hit at 0.9, a false positive at 0.8. 2: a false positive at 0.95, its mass hit
    at 0.4. 3 (negative): false positives at 0.7 and 0.6. In score order: FP .95, TP .9, FP .8, FP .7, FP .6,
    TP .4 -> at most 1 FP/image (3 FPs) the best sensitivity is 1/2, first reached at threshold 0.9 with
    1/3 FP/image; both masses need 4 FPs (1.33 FP/image)."""
    gt = {1: [[10, 10, 30, 30]], 2: [[50, 50, 70, 70]], 3: np.zeros((0, 4))}
    boxes = {1: [[10, 10, 30, 30], [80, 80, 100, 100]], 2: [[0, 0, 15, 15], [51, 50, 70, 71]],
             3: [[20, 20, 40, 40], [60, 60, 80, 80]]}
    scores = {1: [0.9, 0.8], 2: [0.95, 0.4], 3: [0.7, 0.6]}
    return gt, boxes, scores


def test_operating_point_by_hand():
    fr = froc(*_froc_by_hand())
    p = operating_point(fr, 1.0)
    assert p["sensitivity"] == 0.5 and p["threshold"] == 0.9 and abs(p["fppi"] - 1 / 3) < 1e-9
    assert operating_point(fr, 0.25) == {"sensitivity": 0.0, "fppi": 0.0, "threshold": float("inf")}
    assert operating_point(fr, 2.0)["sensitivity"] == 1.0 and operating_point(fr, 2.0)["threshold"] == 0.4
    assert fr["sensitivity"][fr["fp_rates"].index(1)] == p["sensitivity"]  # the FROC's own reading agrees


def test_run_figures_read_an_evaluated_run(tmp_path):
    """A run folder as PatientEvaluator writes it: patient AUC 3/4 by hand (positives 0.9, 0.4; negatives
    0.7, 0.3: 3 of 4 pairs ordered), lesion sensitivity 1/2 at 1 FP/image."""
    labels = {"p1": 1, "p2": 1, "p3": 0, "p4": 0}
    scores = {"p1": 0.9, "p2": 0.4, "p3": 0.7, "p4": 0.3}
    m = patient_metrics(scores, labels, bootstrap=50)
    eval_dir = tmp_path / "run" / "inference" / "mammo_synth_test"
    eval_dir.mkdir(parents=True)
    patient = {k: m[k] for k in ("auc", "sensitivity", "specificity", "accuracy", "tp", "fp", "tn", "fn",
                                 "num_patients")}
    for k, (lo, hi) in m["ci"].items():
        patient[f"{k}_ci_low"], patient[f"{k}_ci_high"] = lo, hi
    with open(eval_dir / "patient_metrics.json", "w") as f:
        json.dump({"results": {"patient": patient}, "froc": froc(*_froc_by_hand()), "threshold": 0.5}, f)
    with open(eval_dir / "patients.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patient_id", "label", "score"])
        w.writerows((p, labels[p], scores[p]) for p in labels)
    fig = run_figures(str(tmp_path / "run"))
    assert fig["patient_auc"] == 0.75 and fig["num_patients"] == 4 and fig["num_positive_patients"] == 2
    assert fig["lesion_sensitivity"] == 0.5 and fig["operating_threshold"] == 0.9
    assert fig["num_lesions"] == 2 and fig["num_images"] == 3
    assert fig["patient_auc_ci"][0] <= 0.75 <= fig["patient_auc_ci"][1]
    # evaluated without a bootstrap (TEST.PATIENT.BOOTSTRAP 0): no interval, NaN, and the summary says so
    for k in list(patient):
        if k.endswith(("_ci_low", "_ci_high")):
            patient[k] = None
    with open(eval_dir / "patient_metrics.json", "w") as f:
        json.dump({"results": {"patient": patient}, "froc": froc(*_froc_by_hand()), "threshold": 0.5}, f)
    fig = run_figures(str(tmp_path / "run"))
    assert fig["patient_auc"] == 0.75 and all(math.isnan(v) for v in fig["patient_auc_ci"])
    text = format_summary({"figures": fig, "config": "a.yaml", "wall_seconds": 1.0})
    assert "patient ROC AUC                         0.750 [no bootstrap interval]" in text


def test_lesion_breakdown_by_hand():
    def les(cls, kind, box):
        return {"class": cls, "kind": kind, "box": box}

    truth = {
        1: {"density": "A", "calcification_boxes": [],
            "lesions": [les("malignant", "spiculated", [10, 10, 30, 30]), les("benign", "cyst", [60, 60, 80, 80])]},
        2: {"density": "D", "calcification_boxes": [[5, 5, 12, 12]],
            "lesions": [les("malignant", "circumscribed", [50, 50, 70, 70]), les("benign", "oval", [0, 40, 20, 60])]},
        3: {"density": "D", "calcification_boxes": [], "lesions": [les("benign", "cyst", [30, 30, 50, 50])]},
    }
    predictions = {1: ([[10, 10, 30, 30], [60, 61, 80, 80]], [0.9, 0.8]),  # the mass and the cyst
                   2: ([[50, 50, 70, 70], [5, 5, 12, 12], [100, 100, 120, 120]], [0.3, 0.6, 0.7]),  # mass below
                   3: ([[31, 30, 50, 50]], [0.2])}  # the cyst, below the threshold
    b = lesion_breakdown(predictions, truth, threshold=0.5)
    assert b["malignant_by_margin"] == {"circumscribed": {"n": 1, "rate": 0.0}, "spiculated": {"n": 1, "rate": 1.0}}
    assert b["malignant_by_density"] == {"A": {"n": 1, "rate": 1.0}, "D": {"n": 1, "rate": 0.0}}
    assert b["lookalike_flagged_by_kind"] == {"cyst": {"n": 2, "rate": 0.5}, "oval": {"n": 1, "rate": 0.0}}
    assert b["calcifications_flagged"] == {"n": 1, "rate": 1.0}
    # false positives at 0.5: the cyst (image 1), the specks and the empty box (image 2): 3 in 3 images
    assert b["false_positives"]["total"] == 3 and b["false_positives"]["per_image"] == 1.0
    assert b["false_positives"]["on_benign_finding"] == 2


def test_lookalike_cost_by_hand():
    """Two patients with cancer, two without. As is: p1 0.9 (its cyst), p2 0.95 (its specks), p3 0.8 (a cyst),
    p4 0.97 (an oval): 2 of 4 pairs ordered, AUC 1/2. Without the boxes on benign findings: p1 0.6, p2 0.3,
    p3 0.4 (a box on tissue), p4 0 (none left): 3 of 4 pairs ordered, AUC 3/4."""
    def les(cls, box):
        return {"class": cls, "kind": "x", "box": box}

    truth = {1: {"patient_id": "p1", "calcification_boxes": [],
                 "lesions": [les("malignant", [10, 10, 30, 30]), les("benign", [60, 60, 80, 80])]},
             2: {"patient_id": "p2", "calcification_boxes": [[5, 5, 12, 12]],
                 "lesions": [les("malignant", [50, 50, 70, 70])]},
             3: {"patient_id": "p3", "calcification_boxes": [], "lesions": [les("benign", [30, 30, 50, 50])]},
             4: {"patient_id": "p4", "calcification_boxes": [], "lesions": [les("benign", [0, 40, 20, 60])]}}
    predictions = {1: ([[10, 10, 30, 30], [62, 62, 80, 80]], [0.6, 0.9]),
                   2: ([[50, 50, 70, 70], [5, 5, 12, 12]], [0.3, 0.95]),
                   3: ([[31, 30, 50, 50], [90, 90, 110, 110]], [0.8, 0.4]),
                   4: ([[0, 41, 20, 60]], [0.97])}
    cost = lookalike_cost(predictions, truth)
    assert cost["patient_auc_as_is"] == 0.5 and cost["patient_auc_without_benign_findings"] == 0.75


def test_contact_sheet_from_the_command(tmp_path, monkeypatch):
    """tools/make_synthetic.py --contact-sheet PATH: a colour picture with red mass boxes and blue look-alikes."""
    path = str(tmp_path / "sheet.png")
    monkeypatch.setattr(sys, "argv", ["make_synthetic.py", "--contact-sheet", path, "--height", "192",
                                      "--width", "160"])
    runpy.run_path(os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools", "make_synthetic.py"),
                   run_name="__main__")
    sheet = cv2.imread(path, cv2.IMREAD_COLOR)
    assert sheet is not None and sheet.shape[1] == 4 * 160 and sheet.shape[0] > 2 * 192
    b, g, r = (sheet[..., k].astype(int) for k in range(3))
    assert np.sum((r > 200) & (g < 80) & (b < 80)) > 50  # malignant boxes
    assert np.sum((b > 200) & (g > 150) & (r < 80)) > 50  # look-alike ellipses


def _make_set(root, positive, negative, seed):
    """tools/make_synthetic.py as typed, at the tiny size; returns the records.json it writes, which holds the
    set's records with paths relative to the set (the set's folder can move)."""
    from mammo_tl.data.records import load_records

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "tools/make_synthetic.py", "--output", str(root), "--positive", str(positive),
           "--negative", str(negative), "--seed", str(seed), "--height", "192", "--width", "160"]
    done = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    path = root / "records.json"
    assert f"and {path}" in done.stdout
    stored = json.load(open(path))
    assert all(not os.path.isabs(r["file_name"]) and r["file_name"].startswith("images") for r in stored)
    assert load_records(str(path)) == S.load_synthetic(str(root))
    return str(path)


@pytest.mark.slow
def test_phantom_difficulty_as_typed(tmp_path):
    """tools/phantom_difficulty.py on a set written by tools/make_synthetic.py and registered by
    DATASETS.REGISTER_JSON: the patient AUC is the one scikit-learn gives for the run's own detections
    (patient score: its highest box), and the breakdown counts every mass and look-alike of the test set."""
    from sklearn.metrics import roc_auc_score

    from tests.test_records import TRAIN_OPTS

    train = _make_set(tmp_path / "train", 2, 1, seed=5)
    test = _make_set(tmp_path / "test", 2, 2, seed=6)
    out = tmp_path / "out"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    opts = [v for i, v in enumerate(TRAIN_OPTS) if "BOOTSTRAP" not in v and "BOOTSTRAP" not in TRAIN_OPTS[i - 1]]
    cmd = [sys.executable, "tools/phantom_difficulty.py", "--output", str(out), "--bootstrap", "20", "--opts",
           *opts, "SOLVER.MAX_ITER", "2", "DATASETS.REGISTER_JSON", f"['pd_train={train}', 'pd_test={test}']",
           "DATASETS.TRAIN", "('pd_train',)", "DATASETS.TEST", "('pd_test',)"]
    done = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.load(open(out / "difficulty.json"))
    fig = result["figures"]
    assert fig["dataset"] == "pd_test" and fig["num_patients"] == 4 and fig["num_positive_patients"] == 2
    lo, hi = fig["patient_auc_ci"]  # --bootstrap 20 reached the evaluator
    assert 0.0 <= lo <= hi <= 1.0

    with open(tmp_path / "test" / "annotations.json") as f:
        coco = json.load(f)
    patient_of = {im["id"]: im["patient_id"] for im in coco["images"]}
    masses = [les for im in coco["images"] for les in im["lesions"] if les["class"] == "malignant"]
    benign = [les for im in coco["images"] for les in im["lesions"] if les["class"] == "benign"]
    detections = json.load(open(out / "a_positives_only" / "inference" / "pd_test" / "coco_instances_results.json"))
    score = dict.fromkeys(patient_of.values(), 0.0)
    for d in detections:
        score[patient_of[d["image_id"]]] = max(score[patient_of[d["image_id"]]], d["score"])
    label = dict.fromkeys(patient_of.values(), 0)
    for a in coco["annotations"]:
        label[patient_of[a["image_id"]]] = 1
    patients = sorted(score)
    assert fig["patient_auc"] == pytest.approx(roc_auc_score([label[p] for p in patients],
                                                             [score[p] for p in patients]))
    b = result["breakdown"]
    assert sum(v["n"] for v in b["malignant_by_margin"].values()) == len(masses) == fig["num_lesions"]
    flagged_n = {k: v["n"] for k, v in b["lookalike_flagged_by_kind"].items()}
    assert flagged_n == dict(Counter(les["kind"] for les in benign))
    assert result["phantom"]["generator_version"] == S.GENERATOR_VERSION
    assert result["phantom"]["spec"]["seed"] == 6 and result["phantom"]["spec"]["height"] == 192
    assert result["phantom"]["root"] == str(tmp_path / "test")
    assert f"patient ROC AUC                         {fig['patient_auc']:.3f}" in done.stdout
    assert "masses found by margin" in done.stdout


def test_phantom_root_from_the_records(small_set, tmp_path):
    """The set behind a data set's records: found for a synthetic set, none for other images, an error for
    records whose ids point at other images of the set."""
    from mammo_tl.experiments.difficulty import phantom_root

    records = S.load_synthetic(small_set)
    root, info = phantom_root(records[:3], "part")
    assert root == os.path.abspath(small_set) and info["generator_version"] == S.GENERATOR_VERSION
    assert info["spec"]["seed"] == 3 and info["spec"]["calcification_prob"] == 0.5
    other = [dict(r, file_name=str(tmp_path / "images" / os.path.basename(r["file_name"]))) for r in records[:2]]
    assert phantom_root(other, "other") == (None, None)
    swapped = [dict(records[0], image_id=records[1]["image_id"])]
    with pytest.raises(ValueError, match="swapped: image .* not of that synthetic set"):
        phantom_root(swapped, "swapped")
