"""Patient-level metrics and FROC against cases worked out by hand and against scikit-learn."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mammo_tl.evaluation.metrics import froc, match_image, paired_difference, patient_metrics

LABELS = {"p1": 1, "p2": 1, "p3": 1, "p4": 0, "p5": 0, "p6": 0, "p7": 0}
SCORES = {"p1": 0.9, "p2": 0.6, "p3": 0.2, "p4": 0.7, "p5": 0.5, "p6": 0.1, "p7": 0.0}


def test_patient_metrics_by_hand():
    m = patient_metrics(SCORES, LABELS, threshold=0.5, bootstrap=0)
    # predicted positive: score > 0.5 -> p1, p2, p4 (p5 sits exactly on the threshold: negative)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (2, 1, 1, 3)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["accuracy"] == pytest.approx(5 / 7)
    # AUC: of the 3 x 4 positive/negative pairs, the positive scores higher in
    # p1: 4, p2: 3 (not vs p4), p3: 2 (above p6, p7) -> 9 / 12
    assert m["auc"] == pytest.approx(9 / 12)
    ids = sorted(LABELS)
    assert m["auc"] == pytest.approx(roc_auc_score([LABELS[i] for i in ids], [SCORES[i] for i in ids]))
    assert "ci" not in m


def test_patient_metrics_bootstrap_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    labels = {f"p{i}": int(i < 60) for i in range(150)}
    scores = {p: float(np.clip(rng.normal(0.7 if y else 0.35, 0.2), 0, 1)) for p, y in labels.items()}
    a = patient_metrics(scores, labels, bootstrap=300, seed=3)
    b = patient_metrics(scores, labels, bootstrap=300, seed=3)
    assert a["ci"] == b["ci"]
    for k in ("auc", "sensitivity", "specificity", "accuracy"):
        lo, hi = a["ci"][k]
        assert lo <= a[k] <= hi
        assert 0 < hi - lo < 0.35


def test_patient_metrics_errors_name_the_patients():
    with pytest.raises(KeyError, match="p7"):
        patient_metrics({k: v for k, v in SCORES.items() if k != "p7"}, LABELS)
    with pytest.raises(ValueError, match="0 or 1"):
        patient_metrics({"a": 0.3}, {"a": 2})


def test_one_class_gives_nan_auc_not_an_error():
    m = patient_metrics({"a": 0.9, "b": 0.1}, {"a": 0, "b": 0}, bootstrap=0)
    assert np.isnan(m["auc"]) and np.isnan(m["sensitivity"])
    assert m["specificity"] == 0.5


def test_paired_difference():
    better = dict(SCORES, p4=0.3)  # the false positive p4 becomes a true negative
    d = paired_difference(SCORES, better, LABELS, bootstrap=200)
    assert d["specificity"]["diff"] == pytest.approx(1 / 4)
    assert d["sensitivity"]["diff"] == 0.0
    lo, hi = d["specificity"]["ci"]
    assert 0.0 <= lo <= hi


LESION = [10, 10, 30, 30]


def test_far_away_box_is_a_false_positive():
    hits = match_image(np.array([LESION]), np.array([[100, 100, 120, 120]]), np.array([0.9]))
    assert hits.tolist() == [False]


def test_two_boxes_on_one_lesion_give_one_hit_and_one_false_positive():
    boxes = np.array([[11, 11, 31, 31], [10, 10, 30, 30]])
    hits = match_image(np.array([LESION]), boxes, np.array([0.6, 0.8]))
    # the higher-scoring box (second) takes the lesion, the other is a false positive
    assert hits.tolist() == [False, True]


def test_overlap_below_threshold_is_not_a_hit_but_centre_criterion_can_be():
    box = np.array([[10, 10, 50, 50]])  # IoU with the lesion = 400 / 1600 = 0.25, centre (30, 30) on its edge
    assert match_image(np.array([LESION]), box, np.array([0.9])).tolist() == [False]
    assert match_image(np.array([LESION]), box, np.array([0.9]), criterion="center").tolist() == [True]


def test_froc_by_hand():
    # 4 images, 3 lesions. Scores: 0.9 hit (A), 0.8 FP on negative C, 0.7 hit (B lesion 1),
    # 0.6 FP (second box on A's lesion), 0.5 FP on negative D, 0.4 hit (B lesion 2)
    gt = {"A": np.array([LESION]), "B": np.array([[50, 50, 70, 70], [100, 100, 120, 120]]),
          "C": np.zeros((0, 4)), "D": np.zeros((0, 4))}
    boxes = {"A": np.array([LESION, [12, 12, 30, 30]]), "B": np.array([[50, 50, 70, 70], [100, 101, 120, 120]]),
             "C": np.array([[0, 0, 5, 5]]), "D": np.array([[0, 0, 5, 5]])}
    scores = {"A": np.array([0.9, 0.6]), "B": np.array([0.7, 0.4]), "C": np.array([0.8]), "D": np.array([0.5])}
    r = froc(gt, boxes, scores, fp_rates=(0.25, 0.5, 0.75, 1.0))
    # operating points (fppi, sensitivity): (0,0) (0,1/3) (.25,1/3) (.25,2/3) (.5,2/3) (.75,2/3) (.75,1)
    assert r["sensitivity"] == pytest.approx([2 / 3, 2 / 3, 1.0, 1.0])
    assert r["cpm"] == pytest.approx((2 / 3 + 2 / 3 + 1 + 1) / 4)
    assert r["num_lesions"] == 3 and r["num_images"] == 4
    assert r["curve"]["fppi"][-1] == pytest.approx(0.75)


def test_froc_negatives_add_false_positives():
    gt = {"A": np.array([LESION]), "N": np.zeros((0, 4))}
    boxes = {"A": np.array([LESION]), "N": np.array([[0, 0, 5, 5], [40, 40, 50, 50]])}
    few_fp = froc(gt, boxes, {"A": np.array([0.5]), "N": np.array([0.4, 0.3])}, fp_rates=(0.5,))
    many_fp = froc(gt, boxes, {"A": np.array([0.5]), "N": np.array([0.9, 0.8])}, fp_rates=(0.5,))
    assert few_fp["sensitivity"] == [1.0]
    # two negatives' boxes outrank the hit: at most 0.5 FP/image allows one of them, not the hit
    assert many_fp["sensitivity"] == [0.0]


def test_froc_requires_every_image():
    with pytest.raises(KeyError):
        froc({"A": np.zeros((0, 4))}, {}, {})


def test_bootstrap_equals_one_resample_at_a_time_with_sklearn():
    """The vectorised bootstrap draws the same resamples as one resample at a time from the same generator, and
    its metrics on each equal scikit-learn's AUC and the counts' ratios (ties and one-class resamples included)."""
    from sklearn.metrics import roc_auc_score

    from mammo_tl.evaluation.metrics import _bootstrap

    r = np.random.default_rng(3)
    y = np.array([1, 0, 0, 1, 0, 0, 0, 0])  # 2 of 8: about one resample in ten holds no positive patient
    s, s_other = np.round(r.random(8), 1), np.round(r.random(8), 1)  # rounded: ties
    got = _bootstrap(y, s, 0.5, 300, seed=5, s_other=None, chunk=7)  # chunks that do not divide 300
    diff = _bootstrap(y, s, 0.5, 300, seed=5, s_other=s_other, chunk=300)
    rng = np.random.default_rng(5)
    one_class = 0
    for i in range(300):
        idx = rng.integers(0, 8, 8)
        yy = y[idx]

        def metrics(scores, yy=yy):
            pred = scores > 0.5
            pos, neg = yy == 1, yy == 0
            return {"auc": roc_auc_score(yy, scores) if 0 < pos.sum() < len(yy) else np.nan,
                    "sensitivity": (pred & pos).sum() / pos.sum() if pos.any() else np.nan,
                    "specificity": (~pred & neg).sum() / neg.sum() if neg.any() else np.nan,
                    "accuracy": (pred == pos).mean()}

        a, b = metrics(s[idx]), metrics(s_other[idx])
        one_class += bool(np.isnan(a["auc"]))
        for k in a:
            np.testing.assert_allclose(got[k][i], a[k], atol=1e-12)
            np.testing.assert_allclose(diff[k][i], b[k] - a[k], atol=1e-12)
    assert one_class > 0  # some resamples hold one class: their AUC is NaN in both
