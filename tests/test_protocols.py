"""The phantom's protocols (mammo_tl.data.synthetic, SyntheticSpec.protocol): what each puts in which breast,
counted from a set's own files; the paper's case mix; the protocol recorded and keying the cache; the
screening protocol's output unchanged from generator version 3 as it was before protocols existed."""
import csv
import hashlib
import json
import os
from collections import Counter, defaultdict

import numpy as np
import pytest

from mammo_tl.data.synthetic import (DDSM_TEST_MIX, DDSM_TRAIN_MIX, PROTOCOLS, SyntheticSpec, case_mix,
                                     draw_ddsm_case, draw_patient, generate, matches_spec)
from tests.common import REPO, TINY_SPEC, run_in_process

# sha256 of the JSON and CSV files of SyntheticSpec(2 positive, 2 negative, seed 5, TINY_SPEC) and its records.json
# as written by tools/make_synthetic.py, both made by the generator of commit 9dc7713 (before protocols).
# annotations.json: the hash of that file; today's differs from it only by info.spec's two new keys (protocol,
# malignant_lookalike_prob), removed before hashing.
GENERATOR_3_HASHES = {
    "annotations.json": "dc1b71be6d0c81fa4f9a852961fe38420d59cd23d7f81f2161d1ab2a2621d86e",
    "patients.csv": "fa390106eb42eebaabe75228c01602be4da0fb4ae104172c13c6ebf5c019617c",
    "records.json": "bd564077cd25b60e511b07f06c487da4cd400d6cb6334f8b37a9db1eb012d80f",
}
# The images' pixels, as the means of a 4 x 4 grid of blocks of each decoded 16-bit PNG, within 2 grey levels of
# 65535. Not the PNG files' bytes: the same pixels compress to other bytes on other processors (OpenCV's bundled
# zlib; measured: every PNG's sha256 differed on a 2-core AMD EPYC with AVX2 from the one recorded on the machine
# of commit 9dc7713, while every JSON file above was byte for byte the same), and a new OpenCV may change them too.
# Recorded from this generator on that AMD EPYC; a change to the generator moves block means by far more.
GENERATOR_3_PIXELS = {
    "images/SYN005_00000_L_CC.png": [
        994.0, 2486.5, 11194.0, 15749.6, 4643.4, 31684.0, 34080.8, 25865.4,
        4492.0, 20822.1, 28961.9, 22315.9, 982.6, 2716.9, 9894.2, 12447.5,
    ],
    "images/SYN005_00000_L_MLO.png": [
        974.5, 3438.9, 14375.7, 37807.9, 1169.5, 26149.5, 28457.2, 29194.1,
        1395.0, 26570.8, 25506.3, 27610.6, 996.4, 7140.1, 16438.9, 22456.4,
    ],
    "images/SYN005_00000_R_CC.png": [
        13511.0, 17317.2, 7374.4, 985.8, 29177.8, 21521.9, 24603.0, 6510.8,
        27886.5, 32126.6, 26562.8, 6125.2, 18844.8, 18644.2, 4127.1, 978.1,
    ],
    "images/SYN005_00000_R_MLO.png": [
        31592.4, 10702.4, 2749.4, 1009.1, 30630.4, 34821.8, 29334.5, 1996.8,
        21122.3, 20192.0, 22062.6, 2834.9, 15268.4, 7717.0, 2745.4, 985.7,
    ],
    "images/SYN005_00001_L_CC.png": [
        985.1, 2112.5, 10361.9, 18118.8, 5825.6, 30437.7, 37760.2, 37265.4,
        8089.8, 28405.0, 34996.3, 34914.9, 977.6, 6817.0, 14193.3, 19558.0,
    ],
    "images/SYN005_00001_R_CC.png": [
        18280.4, 19126.9, 5802.5, 973.3, 29877.0, 38258.3, 30666.2, 2751.1,
        34685.4, 40873.3, 30700.9, 1688.0, 22897.1, 16636.4, 2570.3, 987.1,
    ],
    "images/SYN005_00001_R_MLO.png": [
        44048.7, 22799.4, 1886.0, 982.8, 40935.4, 35667.4, 25691.3, 1033.6,
        31707.6, 32655.1, 24365.5, 1191.3, 19295.4, 13667.2, 2526.4, 1016.4,
    ],
    "images/SYN005_00002_L_CC.png": [
        989.1, 1699.5, 12972.7, 17974.9, 1001.2, 16407.5, 24479.4, 27571.5,
        986.9, 11293.6, 19046.0, 26548.9, 987.8, 1179.9, 8497.6, 19598.2,
    ],
    "images/SYN005_00002_R_CC.png": [
        19810.0, 12616.1, 3854.7, 980.1, 25031.4, 26072.8, 26415.8, 4625.7,
        31465.3, 34230.7, 25940.8, 2518.3, 17813.9, 10798.3, 2606.9, 991.5,
    ],
    "images/SYN005_00003_L_CC.png": [
        983.2, 2677.6, 9901.1, 12916.8, 3108.1, 25605.0, 27584.2, 22389.2,
        3046.1, 32706.2, 33720.0, 28531.3, 1005.4, 3166.3, 13143.8, 14743.1,
    ],
    "images/SYN005_00003_L_MLO.png": [
        979.9, 4507.7, 15655.9, 36713.1, 9242.3, 30289.9, 28649.3, 28425.3,
        5808.3, 25996.4, 31443.2, 29605.5, 969.6, 3305.4, 17866.8, 21626.3,
    ],
}


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def _breasts(root):
    """(patient label, laterality) -> per view (annotated masses, look-alikes), read from the set's files."""
    with open(os.path.join(root, "patients.csv")) as f:
        labels = {r["patient_id"]: int(r["label"]) for r in csv.DictReader(f)}
    with open(os.path.join(root, "annotations.json")) as f:
        coco = json.load(f)
    masses = Counter(a["image_id"] for a in coco["annotations"])
    out = defaultdict(list)
    for im in coco["images"]:
        out[(im["patient_id"], im["laterality"])].append(
            (labels[im["patient_id"]], im["view"], masses[im["id"]], len(im["lookalike_kinds"])))
    return out, coco


def test_screening_is_generator_3_byte_for_byte(tmp_path):
    """Same spec and seed: every file as the generator wrote it before protocols (hashes and pixels above);
    annotations.json with info.spec's two new keys taken out, re-serialised as written (json.dump's defaults)."""
    from mammo_tl.data.records import save_records
    from mammo_tl.data.synthetic import load_synthetic

    out = tmp_path / "set"
    spec = SyntheticSpec(num_positive_patients=2, num_negative_patients=2, seed=5, **TINY_SPEC)
    assert spec.protocol == "screening"
    generate(str(out), spec, progress=False)
    save_records(load_synthetic(str(out)), str(out / "records.json"))
    assert _files(out) == sorted([*GENERATOR_3_HASHES, *GENERATOR_3_PIXELS])
    for name, expected in GENERATOR_3_HASHES.items():
        data = (out / name).read_bytes()
        if name == "annotations.json":
            coco = json.loads(data)
            assert coco["info"]["spec"]["protocol"] == "screening"
            del coco["info"]["spec"]["protocol"], coco["info"]["spec"]["malignant_lookalike_prob"]
            data = json.dumps(coco).encode()
        assert _sha(data) == expected, name
    import cv2

    for name, expected in GENERATOR_3_PIXELS.items():
        img = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
        assert img.dtype == np.uint16 and img.shape == (192, 160), name
        blocks = img.astype(np.float64).reshape(4, 48, 4, 40).mean(axis=(1, 3)).ravel()
        np.testing.assert_allclose(blocks, expected, atol=2.0, rtol=0, err_msg=name)


def test_ddsm_breasts_counted_from_the_set(tmp_path):
    """4 malignant and 4 benign cases: one breast each, CC and MLO; every benign image holds 1-2 look-alikes and
    no annotation; every malignant image its 1-2 annotated cancers (the same number in both views) and at most
    one look-alike; the protocol recorded."""
    root = str(tmp_path / "ddsm")
    spec = SyntheticSpec(num_positive_patients=4, num_negative_patients=4, seed=3, protocol="ddsm", **TINY_SPEC)
    generate(root, spec, progress=False)
    breasts, coco = _breasts(root)
    assert coco["info"]["spec"]["protocol"] == "ddsm"
    assert len(breasts) == 8  # one breast per case
    labels = Counter()
    for (patient, _), views in breasts.items():
        assert sorted(v[1] for v in views) == ["CC", "MLO"], patient
        label = views[0][0]
        labels[label] += 1
        for _, view, masses, looks in views:
            if label == 1:
                assert masses in (1, 2) and looks in (0, 1), (patient, view)
            else:
                assert masses == 0 and looks in (1, 2), (patient, view)
        assert len({(m, k) for _, _, m, k in views}) == 1, patient  # the same findings in both views
    assert labels == {1: 4, 0: 4}


def test_screening_breasts_counted_from_the_set(tmp_path):
    """The screening protocol: 2-4 views; a positive patient has exactly one breast with 1-2 annotated cancers,
    every other breast (all of a healthy woman's) none; any breast 0 or 1 look-alike."""
    root = str(tmp_path / "screening")
    generate(root, SyntheticSpec(num_positive_patients=3, num_negative_patients=3, seed=4, **TINY_SPEC),
             progress=False)
    breasts, coco = _breasts(root)
    assert coco["info"]["spec"]["protocol"] == "screening"
    sick = Counter()
    for (patient, _), views in breasts.items():
        label = views[0][0]
        assert all(looks in (0, 1) for *_, looks in views)
        if any(m for _, _, m, _ in views):
            assert label == 1 and all(m in (1, 2) for _, _, m, _ in views), patient
            sick[patient] += 1
    assert len(sick) == 3 and set(sick.values()) == {1}


def test_lookalike_rates_per_breast():
    """Rates over 4000 drawn cases (no rendering), each within 4 binomial standard deviations: ddsm benign
    breasts 1 or 2 look-alikes (1/2 each), malignant breasts a look-alike at malignant_lookalike_prob (0.1);
    screening: every breast 0.5, healthy or not."""
    spec = SyntheticSpec(protocol="ddsm")
    n = 4000
    rng = np.random.default_rng(0)

    def within(count, p):
        return abs(count - n * p) <= 4 * (n * p * (1 - p)) ** 0.5

    benign = Counter(len(b["lookalikes"]) for _ in range(n) for b in draw_ddsm_case(rng, spec, 0)[4].values())
    assert set(benign) == {1, 2} and within(benign[2], 0.5)
    malignant = [b for _ in range(n) for b in draw_ddsm_case(rng, spec, 1)[4].values()]
    assert all(len(b["masses"]) in (1, 2) and len(b["lookalikes"]) <= 1 for b in malignant)
    assert within(sum(len(b["lookalikes"]) for b in malignant), 0.1)
    screening = SyntheticSpec()
    healthy = [b for _ in range(n // 2) for b in draw_patient(rng, screening, 0)[4].values()]
    assert all(not b["masses"] for b in healthy)
    assert abs(sum(len(b["lookalikes"]) for b in healthy) / len(healthy) - 0.5) < 4 * (0.25 / len(healthy)) ** 0.5


def test_case_mix_and_builtin_ddsm_sets():
    assert case_mix(200, DDSM_TEST_MIX) == (90, 110)
    assert case_mix(100, DDSM_TEST_MIX) == (45, 55)
    assert case_mix(300, DDSM_TRAIN_MIX) == (152, 148)  # 300 * 304 / 600 = 152 exactly
    assert case_mix(10, DDSM_TRAIN_MIX) == (5, 5)  # 5.07 rounds to 5
    with pytest.raises(ValueError, match="case_mix"):
        case_mix(-1, DDSM_TEST_MIX)
    from mammo_tl.data.datasets import BUILTIN_SYNTHETIC

    for split, mix in (("train", (304, 296)), ("test", (45, 55)), ("val", (45, 55))):
        spec = BUILTIN_SYNTHETIC[f"mammo_synth_ddsm_{split}"]
        assert spec.protocol == "ddsm"
        total = spec.num_positive_patients + spec.num_negative_patients
        assert abs(spec.num_positive_patients / total - mix[0] / sum(mix)) <= 0.5 / total, split
    # the default of the screening sets (and of make demo) is unchanged
    assert {BUILTIN_SYNTHETIC[f"mammo_synth_{s}"].protocol for s in ("train", "test", "val")} == {"screening"}
    seeds = [s.seed for s in BUILTIN_SYNTHETIC.values()]
    assert len(seeds) == len(set(seeds))  # no patient id shared between two built-in sets


def test_bad_protocol_is_refused():
    with pytest.raises(ValueError, match="SyntheticSpec.protocol must be one of"):
        SyntheticSpec(protocol="ddms")
    with pytest.raises(ValueError, match="malignant_lookalike_prob"):
        SyntheticSpec(malignant_lookalike_prob=1.5)
    r = run_in_process(["tools/make_synthetic.py", "--output", "unused", "--protocol", "ddms"])
    assert r.returncode == 2 and "--protocol" in r.stderr and "ddms" in r.stderr
    assert PROTOCOLS == ("screening", "ddsm")


def test_cache_is_keyed_by_protocol(tmp_path):
    """A registered set whose folder holds the same spec under another protocol is generated again; a set
    whose annotations.json records no protocol (an older generator) is not taken for either."""
    from detectron2.data import DatasetCatalog

    from mammo_tl.data.datasets import register_synthetic

    root = str(tmp_path / "cached")
    screening = SyntheticSpec(num_positive_patients=1, num_negative_patients=1, seed=6, **TINY_SPEC)
    ddsm = SyntheticSpec(num_positive_patients=1, num_negative_patients=1, seed=6, protocol="ddsm", **TINY_SPEC)
    generate(root, screening, progress=False)
    assert matches_spec(root, screening) and not matches_spec(root, ddsm)
    name = "mammo_synth_test_protocol_cache"
    register_synthetic(name, root, ddsm)
    try:
        records = DatasetCatalog.get(name)
    finally:
        DatasetCatalog.remove(name)
    with open(os.path.join(root, "annotations.json")) as f:
        assert json.load(f)["info"]["spec"]["protocol"] == "ddsm"
    assert len(records) == 4  # two cases of two views each
    assert matches_spec(root, ddsm) and not matches_spec(root, screening)
    # an annotations.json without the protocol keys (written before protocols) matches no spec
    path = os.path.join(root, "annotations.json")
    with open(path) as f:
        coco = json.load(f)
    del coco["info"]["spec"]["protocol"], coco["info"]["spec"]["malignant_lookalike_prob"]
    with open(path, "w") as f:
        json.dump(coco, f)
    assert not matches_spec(root, ddsm) and not matches_spec(root, screening)


def test_make_synthetic_ddsm_command(tmp_path):
    """The documented command (docs/phantom.md) on a tiny set: the protocol recorded, the counts as asked."""
    out = tmp_path / "mine_ddsm"
    r = run_in_process(["tools/make_synthetic.py", "--output", str(out), "--protocol", "ddsm", "--positive", "2",
                        "--negative", "3", "--height", "192", "--width", "160"], cwd=REPO)
    assert r.returncode == 0, r.stderr
    coco = json.loads((out / "annotations.json").read_text())
    assert coco["info"]["spec"]["protocol"] == "ddsm"
    with open(out / "patients.csv") as f:
        rows = list(csv.DictReader(f))
    assert Counter(r["label"] for r in rows) == {"1": 2, "0": 3}
    assert all(r["num_images"] == "2" for r in rows)
    assert len(json.loads((out / "records.json").read_text())) == 10
