"""tools/predict.py --shard I/N and --merge: whole studies (and patients, folders) in one shard, and the merged
outputs equal to one unsharded run's, file by file; shards of different runs refused."""
import filecmp
import hashlib
import json
import os
import shutil

import cv2
import pydicom
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from mammo_tl.inference.command import PredictError, run_merge, run_predict
from mammo_tl.inference.options import check_shard
from tests.common import breast_phantom, run_in_process, tiny_cfg
from tests.realistic_fixtures import mammogram, write_dicom
from tests.test_weights import tiny_config_file, tiny_weights

OPTS = ["MODEL.DEVICE", "cpu"]
TABLES = ("predictions.jsonl", "predictions.json", "patients.csv", "skipped.json")


# When a DICOM output was written (highdicom stamps the time of writing): the only elements that differ.
CREATION_TIMES = ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime",
                  "PresentationCreationDate", "PresentationCreationTime")


def _without_creation_times(ds):
    for keyword in CREATION_TIMES:
        if keyword in ds:
            delattr(ds, keyword)
    for item in ds.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            del item.ContributionDateTime
    return ds


def _shard(kind, value, n=2):
    """The shard a key falls in, computed here from its definition: sha256 of "kind:value", first 8 bytes."""
    return int.from_bytes(hashlib.sha256(f"{kind}:{value}".encode()).digest()[:8], "big") % n + 1


def _uid_in_shard(shard, start):
    k = start
    while _shard("study", f"1.2.826.0.1.3680043.8.498.{k}") != shard:
        k += 1
    return f"1.2.826.0.1.3680043.8.498.{k}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Study A (two images in two folders) in shard 1, study B in shard 2, two PNGs (one listed in --patients),
    an unreadable file; predicted once unsharded, then as shards 1/2 and 2/2 and merged."""
    root = tmp_path_factory.mktemp("shard")
    src = root / "in"
    study_a, study_b = _uid_in_shard(1, 1), _uid_in_shard(2, 1)
    for name, study, side, seed in (("x/a1.dcm", study_a, "L", 1), ("y/a2.dcm", study_a, "R", 2),
                                    ("y/b1.dcm", study_b, "L", 3)):
        write_dicom(str(src / name), mammogram((180, 120), side, [(20, 60, 50, 90)], seed=seed), f"P_{study[-2:]}",
                    laterality=side, view="CC", study_uid=study, series_uid=study + ".1")
    os.makedirs(src / "png")
    cv2.imwrite(str(src / "png" / "P7_L_CC.png"), breast_phantom(seed=7))
    cv2.imwrite(str(src / "png" / "P8_R_CC.png"), breast_phantom(seed=8))
    (src / "png" / "broken.png").write_bytes(b"not a png")
    (src / "patients.csv").write_text("file,patient_id\npng/P8_R_CC.png,P8\n")
    config, weights = tiny_config_file(tmp_path_factory), tiny_weights(tmp_path_factory)
    # the random model's scores are about 0.5: a few boxes per image keep the DICOM reports small
    common = dict(overlay=True, workers=0, patients=str(src / "patients.csv"), min_score=0.53)
    run_predict(config, [str(src)], str(root / "all"), OPTS, dicom_out=str(root / "all_dicom"), **common)
    run_predict(config, [str(src)], str(root / "s1"), OPTS, shard="1/2", **common)
    r = run_in_process([os.path.join("tools", "predict.py"), "--config-file", config, "--input", str(src),
                        "--output", str(root / "s2"), "--shard", "2/2", "--overlay", "--patients",
                        str(src / "patients.csv"), "--workers", "0", "--min-score", "0.53", "MODEL.WEIGHTS", weights])
    assert r.returncode == 0, r.stderr
    r = run_in_process([os.path.join("tools", "predict.py"), "--merge", str(root / "s1"), str(root / "s2"),
                        "--output", str(root / "merged"), "--dicom-out", str(root / "merged_dicom")])
    assert r.returncode == 0, r.stderr
    return {"root": root, "src": src, "config": config, "studies": (study_a, study_b), "common": common}


def test_shards_keep_studies_patients_and_folders_whole(runs):
    src = runs["src"]
    shards = {i: json.load(open(runs["root"] / f"s{i}" / "run.json"))["shard"] for i in (1, 2)}
    png = os.path.dirname(os.path.abspath(src / "png" / "P7_L_CC.png"))
    expected = {str(src / "x/a1.dcm"): 1, str(src / "y/a2.dcm"): 1, str(src / "y/b1.dcm"): 2,
                str(src / "png/P8_R_CC.png"): _shard("patient", "P8"),
                str(src / "png/P7_L_CC.png"): _shard("folder", png),
                str(src / "png/broken.png"): _shard("folder", png)}
    got = {f: i for i, s in shards.items() for f in s["files"]}
    assert got == expected
    assert sum(s["keys"]["study"] for s in shards.values()) == 3
    assert sum(s["keys"]["patient"] for s in shards.values()) == 1
    assert sum(s["keys"]["folder"] for s in shards.values()) == 2


def test_merged_outputs_equal_one_unsharded_run(runs):
    root = runs["root"]
    for name in TABLES:
        assert filecmp.cmp(root / "all" / name, root / "merged" / name, shallow=False), name
    a, b = (json.load(open(root / d / "summary.json")) for d in ("all", "merged"))
    assert a["dicom"].pop("folder") == str(root / "all_dicom")
    assert b["dicom"].pop("folder") == str(root / "merged_dicom")
    assert a == b and a["predicted"] == 5 and a["skipped"] == 1
    assert all(0 < len(p["boxes"]) < 100 for p in json.load(open(root / "all" / "predictions.json")))
    assert a["dicom"]["presentation_states"] == 3 and a["dicom"]["reports"] == 2
    dicom = sorted(n for n in os.listdir(root / "all_dicom") if n.endswith(".dcm"))
    assert len(dicom) == 5 and dicom == sorted(n for n in os.listdir(root / "merged_dicom") if n.endswith(".dcm"))
    for n in dicom:  # equal but for the time each was written
        a, b = (_without_creation_times(pydicom.dcmread(str(root / d / n))) for d in ("all_dicom", "merged_dicom"))
        assert a == b and a.file_meta == b.file_meta, n
    overlays = sorted(os.listdir(root / "all" / "overlays"))
    assert len(overlays) == 5 and overlays == sorted(os.listdir(root / "merged" / "overlays"))
    for n in overlays:
        assert filecmp.cmp(root / "all" / "overlays" / n, root / "merged" / "overlays" / n, shallow=False)
    merged = json.load(open(root / "merged" / "run.json"))
    assert merged["options"]["shard"] is None and [m["shard"] for m in merged["merged_from"]] == [[1, 2], [2, 2]]
    manifest = json.load(open(root / "merged" / "manifest.json"))["files"]
    assert set(manifest) >= {"run.json", *TABLES, "summary.json", *(f"overlays/{n}" for n in overlays)}


def test_shards_of_different_runs_are_not_merged(runs, tmp_path_factory):
    root, src, config, common = runs["root"], runs["src"], runs["config"], runs["common"]
    other = tmp_path_factory.mktemp("shard_other")

    def merge(*folders):
        return run_merge([str(f) for f in folders], str(other / "m"))

    with pytest.raises(PredictError, match=r"shard\(s\) 2/2 missing \(given 1/2\)"):
        merge(root / "s1")
    with pytest.raises(PredictError, match=r"both shard 1/2"):
        merge(root / "s1", root / "s1", root / "s2")
    run_predict(config, [str(src)], str(other / "score"), OPTS, shard="2/2", **{**common, "min_score": 0.54})
    with pytest.raises(PredictError, match=r"not shards of one run: --min-score \(0\.53 then, 0\.54 now\)"):
        merge(root / "s1", other / "score")
    run_predict(config, [str(src)], str(other / "three"), OPTS, shard="2/3", **common)
    with pytest.raises(PredictError, match=r"not shards of one run: --shard .*'count': 2.*'count': 3"):
        merge(root / "s1", other / "three")
    torch.manual_seed(5)
    DetectionCheckpointer(build_model(tiny_cfg()), save_dir=str(other)).save("other_model")
    run_predict(config, [str(src)], str(other / "model"), OPTS + ["MODEL.WEIGHTS", str(other / "other_model.pth")],
                shard="2/2", **common)
    with pytest.raises(PredictError, match=r"not shards of one run: MODEL\.WEIGHTS \(.* different files\)"):
        merge(root / "s1", other / "model")
    unfinished = other / "unfinished"
    shutil.copytree(root / "s2", unfinished)
    manifest = json.load(open(unfinished / "manifest.json"))
    manifest["files"]["predictions.jsonl"] = None  # as while a run appends to it
    json.dump(manifest, open(unfinished / "manifest.json", "w"))
    with pytest.raises(PredictError, match=r"unfinished: the shard's run has not finished \(predictions\.jsonl"):
        merge(root / "s1", unfinished)
    with pytest.raises(PredictError, match=r"predicted without --shard"):
        merge(root / "s1", root / "all")
    r = run_in_process([os.path.join("tools", "predict.py"), "--merge", str(root / "s1"), str(root / "s2"), "--output",
                        str(other / "m"), "--min-score", "0.2", "--input", str(src)])
    assert r.returncode == 2 and "--input, --min-score do(es) not apply" in r.stderr
    assert not (other / "m" / "predictions.json").exists()


def test_shard_option_is_parsed_as_prepare_dataset_parses_it():
    assert check_shard("2/8") == (2, 8) and check_shard((1, 1)) == (1, 1)
    for bad, why in (("0/2", "I must be between 1 and N"), ("3/2", "I must be between 1 and N"),
                     ("2", "expected I/N"), ("1/0", "at least 1")):
        with pytest.raises(ValueError, match=why):
            check_shard(bad)


def test_merge_refuses_an_overlay_name_outside_the_output(runs, tmp_path_factory):
    root = runs["root"]
    other = tmp_path_factory.mktemp("shard_escape")
    tampered = other / "s2"
    shutil.copytree(root / "s2", tampered)
    lines = [json.loads(line) for line in open(tampered / "predictions.jsonl")]
    victim = next(r for r in lines if r.get("overlay"))
    shutil.copyfile(tampered / victim["overlay"], other / "planted.png")  # where "../planted.png" points from s2
    victim["overlay"] = "../planted.png"
    with open(tampered / "predictions.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in lines)
    manifest = json.load(open(tampered / "manifest.json"))
    manifest["files"]["predictions.jsonl"] = hashlib.sha256((tampered / "predictions.jsonl").read_bytes()).hexdigest()
    json.dump(manifest, open(tampered / "manifest.json", "w"))
    with pytest.raises(PredictError, match=r"names its overlay '\.\./planted\.png', not a file in overlays/"):
        run_merge([str(root / "s1"), str(tampered)], str(other / "deep" / "merged"))
    assert not (other / "deep" / "planted.png").exists()  # "../planted.png" from the merged --output
