"""The preparation cache: never the wrong image, whatever happens to the inputs between runs; shards."""
import json
import os
import runpy
import sys
import tempfile

import cv2
import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mammo_tl.data.datasets import SkipReport, load_csv_dataset
from mammo_tl.data.prepare import (CACHE_VERSION, PrepareError, merge_shards, parse_shard, prepare_dataset,
                                   records_digest, shard_of)
from tests.common import REPO
from tests.dicom_fixtures import make_dicom

H, W = 24, 16  # sources; prepared at half size without crop, so each cached pixel is a 2 x 2 block mean
HALF = (H // 2, W // 2)
HEADER = "patient_id,path,laterality,view,label,boxes\n"
HOUR_AGO_NS = 3600 * 10**9


def _pixels(seed, h=H, w=W):
    """A distinct image per seed: a bright square at a seed-dependent place on a seed-dependent ramp."""
    rng = np.random.default_rng(seed)
    img = (rng.random((h, w)) * 200 + 100 + 50 * seed).astype(np.uint16)
    y, x = 2 * (seed % (h // 2 - 2)), 2 * ((3 * seed) % (w // 2 - 2))
    img[y:y + 4, x:x + 4] = 4000
    return img


def _write(path, pixels):
    if str(path).endswith(".dcm"):
        make_dicom(path, pixels, bits_stored=12)
    else:
        assert cv2.imwrite(str(path), pixels)


def _expected_png(pixels):
    """What prepare must cache for a source without crop at half size, computed with numpy: 2 x 2 block
    means scaled to the full 16-bit range."""
    m = pixels.astype(np.float64).reshape(pixels.shape[0] // 2, 2, pixels.shape[1] // 2, 2).mean(axis=(1, 3))
    return np.round((m - m.min()) * 65535.0 / (m.max() - m.min()))


def _csv(folder, rows, name="data.csv"):
    """rows: (patient, file name, label); a positive image gets one box."""
    lines = [f"{p},{f},L,CC,{label},{'2 2 6 6' if label == 1 else ''}\n" for p, f, label in rows]
    path = os.path.join(folder, name)
    with open(path, "w") as fh:
        fh.write(HEADER + "".join(lines))
    return path


def _png(record):
    return cv2.imread(record["file_name"], cv2.IMREAD_UNCHANGED)


def _prepare(records, out, size=HALF, **kw):
    return prepare_dataset(records, str(out), size=size, crop=False, flip=False, workers=1, progress=False, **kw)


def _age(*paths):
    for p in paths:
        os.utime(p, ns=(os.stat(p).st_atime_ns, os.stat(p).st_mtime_ns - HOUR_AGO_NS))


def test_reordered_csv_rows_keep_each_image_with_its_record(tmp_path):
    sources = {"cancer.png": _pixels(1), "healthy.dcm": _pixels(2), "other.png": _pixels(3)}
    for name, px in sources.items():
        _write(tmp_path / name, px)
    rows = [("p1", "cancer.png", 1), ("p2", "healthy.dcm", 0), ("p3", "other.png", 0)]
    out = tmp_path / "prep"
    _, report = _prepare(load_csv_dataset(_csv(tmp_path, rows)), out)
    assert (report["prepared"], report["cached"]) == (3, 0)
    records = load_csv_dataset(_csv(tmp_path, rows[::-1]))
    for k, r in enumerate(records):  # image ids that follow the row, as a converter might number them
        r["image_id"] = f"data.csv:{k + 1}"
    prepared, report = _prepare(records, out)
    assert (report["prepared"], report["cached"], report["rebuilt"]) == (0, 3, 0)
    for r in prepared:
        src = os.path.basename(r["original_file_name"])
        np.testing.assert_allclose(_png(r), _expected_png(sources[src]), atol=1)
        assert (r["annotations"] != []) == (src == "cancer.png")
        assert r["preprocess"] == {"size": list(HALF), "crop": False, "canonical_flip": False, "decode": "reduced",
                                   "oversample": 1}
        assert (r["original_height"], r["original_width"], r["height"], r["width"]) == (H, W, *HALF)
    box = [a["bbox"] for r in prepared for a in r["annotations"]]
    assert box == [[1.0, 1.0, 3.0, 3.0]]  # (2, 2, 6, 6) at half size


def test_size_change_rebuilds_and_reports_the_old_entries_as_stale(tmp_path):
    _write(tmp_path / "a.png", _pixels(4))
    _write(tmp_path / "b.png", _pixels(5))
    records = load_csv_dataset(_csv(tmp_path, [("p1", "a.png", 0), ("p2", "b.png", 0)]))
    out = tmp_path / "prep"
    _prepare(records, out, size=(H, W))
    prepared, report = _prepare(records, out, size=HALF)
    assert report["rebuilt"] == 2 and report["rebuilt_by_reason"] == {"options changed": 2}
    assert report["cached"] == 0 and report["stale_cache_files"] == 4  # the 24 x 16 PNGs and their sidecars
    assert all(_png(r).shape == HALF and r["preprocess"]["size"] == list(HALF) for r in prepared)
    saved = json.load(open(out / "report.json"))
    assert saved["options"] == {"size": list(HALF), "crop": False, "canonical_flip": False, "decode": "reduced",
                                "oversample": 1}
    _, report = _prepare(records, out, size=HALF, prune_stale=True)
    assert report["cached"] == 2 and report["stale_cache_files"] == 4 and report["stale_pruned"]
    assert len(os.listdir(out / "images")) == 4
    _, report = _prepare(records, out, size=HALF)
    assert report["stale_cache_files"] == 0


@pytest.mark.parametrize("damage", ["empty_png", "truncated_png", "truncated_sidecar", "missing_sidecar",
                                    "foreign_sidecar"])
def test_damaged_cache_files_are_rebuilt_never_trusted(tmp_path, damage):
    px = _pixels(6)
    _write(tmp_path / "a.png", px)
    _write(tmp_path / "b.png", _pixels(7))
    records = load_csv_dataset(_csv(tmp_path, [("p1", "a.png", 0), ("p2", "b.png", 0)]))
    out = tmp_path / "prep"
    prepared, _ = _prepare(records, out)
    png = prepared[0]["file_name"]
    sidecar = png[:-4] + ".json"
    if damage == "empty_png":
        open(png, "wb").close()
    elif damage == "truncated_png":
        data = open(png, "rb").read()
        open(png, "wb").write(data[: len(data) // 2])
    elif damage == "truncated_sidecar":
        data = open(sidecar, "rb").read()
        open(sidecar, "wb").write(data[: len(data) // 2])
    elif damage == "missing_sidecar":
        os.remove(sidecar)
    else:  # the sidecar of b's entry copied over a's: its key names another source
        open(sidecar, "wb").write(open(prepared[1]["file_name"][:-4] + ".json", "rb").read())
    again, report = _prepare(records, out)
    assert report["rebuilt_by_reason"] == {"corrupt cache file": 1} and report["cached"] == 1
    assert report["rebuilt_items"][0]["file_name"] == records[0]["file_name"]
    np.testing.assert_allclose(_png(again[0]), _expected_png(px), atol=1)
    _, report = _prepare(records, out)
    assert report["cached"] == 2


def test_replaced_source_is_prepared_again(tmp_path):
    """A new file under the old name: caught by its mtime, and when size and mtime are the same (a coarse
    file system clock), by the content hash kept for files prepared right after they changed."""
    a, b = tmp_path / "a.dcm", tmp_path / "b.dcm"
    _write(a, _pixels(8))
    _write(b, _pixels(9))
    _age(a)  # a settled file: trusted on size and mtime
    records = load_csv_dataset(_csv(tmp_path, [("p1", "a.dcm", 0), ("p2", "b.dcm", 0)]))
    out = tmp_path / "prep"
    _prepare(records, out)
    assert "source_sha256" not in json.load(open(_sidecars(out)[records[0]["file_name"]]))
    assert "source_sha256" in json.load(open(_sidecars(out)[records[1]["file_name"]]))

    _write(a, _pixels(10))  # new mtime
    stat_b = os.stat(b)
    ds = pydicom.dcmread(b)
    ds.PixelData = _pixels(11).tobytes()  # other pixels, same header: the same file size
    ds.save_as(b)
    os.utime(b, ns=(stat_b.st_atime_ns, stat_b.st_mtime_ns))
    assert os.stat(b).st_size == stat_b.st_size
    prepared, report = _prepare(records, out)
    assert report["rebuilt_by_reason"] == {"source changed": 2}
    np.testing.assert_allclose(_png(prepared[0]), _expected_png(_pixels(10)), atol=1)
    np.testing.assert_allclose(_png(prepared[1]), _expected_png(_pixels(11)), atol=1)


def _sidecars(out):
    found = {}
    for n in os.listdir(os.path.join(out, "images")):
        if n.endswith(".json"):
            p = os.path.join(out, "images", n)
            found[json.load(open(p))["key"]["source"]["path"]] = p
    return found


def _comparable(records, out):
    """Records with their cache path replaced by the PNG's pixels (as a list, for ==)."""
    rows = []
    for record in records:
        r = dict(record)
        assert os.path.dirname(os.path.abspath(r["file_name"])) == os.path.abspath(os.path.join(out, "images"))
        r["file_name"] = _png(r).tolist()
        rows.append(r)
    return rows


@settings(max_examples=15, deadline=None, derandomize=not os.environ.get("MAMMO_TL_FUZZ_RANDOM"),
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(range(4)), renamed=st.sets(st.integers(0, 3)), resized=st.sets(st.integers(0, 3)),
       half_first=st.booleans(), half_second=st.booleans(), dicom=st.lists(st.booleans(), min_size=4, max_size=4))
def test_rerun_into_an_existing_cache_equals_a_fresh_run(order, renamed, resized, half_first, half_second, dicom):
    """Whatever is permuted, renamed or resized between two runs into one folder, the second run's records
    equal a fresh run's: same pixels, same boxes, same everything but the cache path."""
    with tempfile.TemporaryDirectory() as d:
        names = [f"img{k}.{'dcm' if dicom[k] else 'png'}" for k in range(4)]
        for k, n in enumerate(names):
            _write(os.path.join(d, n), _pixels(20 + k))
        rows = [(f"p{k}", names[k], int(k == 0)) for k in range(4)]
        out = os.path.join(d, "prep")
        _prepare(load_csv_dataset(_csv(d, rows)), out, size=HALF if half_first else (H, W))

        for k in renamed:
            new = f"renamed{k}_{names[k]}"
            os.rename(os.path.join(d, names[k]), os.path.join(d, new))
            names[k] = new
        for k in resized:
            _write(os.path.join(d, names[k]), _pixels(40 + k, h=2 * H, w=2 * W))
        rows = [(f"p{k}", names[k], int(k == 0)) for k in order]
        records = load_csv_dataset(_csv(d, rows))
        size = HALF if half_second else (H, W)
        again, report = _prepare(records, out, size=size)
        fresh_out = os.path.join(d, "fresh")
        fresh, _ = _prepare(records, fresh_out, size=size)
        assert report["used"] == 4 and report["skipped"] == 0
        assert _comparable(again, out) == _comparable(fresh, fresh_out)


def _dataset(folder, n=7):
    names = [f"s{k}.{'dcm' if k % 3 == 0 else 'png'}" for k in range(n)]
    for k, name in enumerate(names):
        _write(os.path.join(folder, name), _pixels(60 + k))
    rows = [(f"p{k}", name, int(k % 2)) for k, name in enumerate(names)]
    rows.append(("p99", "missing.png", 0))  # skipped by the converter
    return _csv(folder, rows)


def test_shards_then_merge_equal_one_unsharded_run(tmp_path):
    records = load_csv_dataset(_dataset(str(tmp_path)))
    records.append(dict(records[0], image_id="gone", file_name=str(tmp_path / "gone.png")))  # skipped by prepare
    whole, whole_report = _prepare(records, tmp_path / "whole")
    sharded = tmp_path / "sharded"
    counts = []
    for i in (1, 2, 3):
        part, report = _prepare(records, sharded, shard=(i, 3))
        counts.append(report["inputs"])
        assert all(shard_of(r["original_file_name"], 3) == i for r in part)
    assert sum(counts) == len(records) and max(counts) < len(records)  # a real split
    merged, merged_report = merge_shards(records, str(sharded))
    assert _comparable(merged, sharded) == _comparable(whole, tmp_path / "whole")
    assert merged_report == whole_report
    assert merged_report["skipped"] == 1 and merged_report["skipped_by_reason"] == {"file not found": 1}
    for name in ("records.json", "report.json"):
        a = json.load(open(tmp_path / "whole" / name))
        b = json.load(open(sharded / name))
        assert a == b  # records.json stores cache paths relative to its folder


def test_merge_refuses_missing_or_mismatched_shards(tmp_path):
    records = load_csv_dataset(_dataset(str(tmp_path)))
    out = tmp_path / "prep"
    for i in (1, 3):
        _prepare(records, out, shard=(i, 3))
    with pytest.raises(PrepareError, match=r"shard\(s\) 2/3 missing"):
        merge_shards(records, str(out))
    _prepare(records, out, size=(H, W), shard=(2, 3))
    with pytest.raises(PrepareError, match=r"shard 2/3 was prepared with options .*'size': \[24, 16\]"):
        merge_shards(records, str(out))
    _prepare(records, out, shard=(2, 3))
    changed = [dict(r) for r in records]
    changed[0]["patient_id"] = "someone else"
    with pytest.raises(PrepareError, match=r"shard 1/3 was prepared from other converted records"):
        merge_shards(changed, str(out))
    _prepare(records, out, shard=(1, 2))
    with pytest.raises(PrepareError, match=r"several runs, N = \[2, 3\]"):
        merge_shards(records, str(out))
    merged, report = merge_shards(records, str(out), num_shards=3)
    assert report["used"] == len(records) and len(merged) == len(records)


def test_shard_assignment_is_stable_and_validated():
    paths = [f"/data/img{k}.dcm" for k in range(200)]
    assert [shard_of(p, 4) for p in paths] == [shard_of(p, 4) for p in reversed(paths)][::-1]
    assert {shard_of(p, 4) for p in paths} == {1, 2, 3, 4}
    assert parse_shard("2/8") == (2, 8) and parse_shard(" 8 / 8 ") == (8, 8)
    for bad, match in (("0/3", "between 1 and N = 3"), ("4/3", "between 1 and N = 3"),
                       ("1/0", "N = 0, the number of shards, must be at least 1"),
                       ("2", "expected I/N"), ("a/b", "expected I/N")):
        with pytest.raises(PrepareError, match=match):
            parse_shard(bad)


def test_records_digest_is_the_same_for_records_read_back(tmp_path):
    from mammo_tl.data.datasets.common import load_records, save_records

    records = load_csv_dataset(_dataset(str(tmp_path)))
    save_records(records, str(tmp_path / "records.json"))
    assert records_digest(load_records(str(tmp_path / "records.json"))) == records_digest(records)
    changed = [dict(r) for r in records]
    changed[1] = dict(changed[1], laterality="R")
    assert records_digest(changed) != records_digest(records)


def _tool(monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", ["prepare_dataset.py", *map(str, args)])
    try:
        runpy.run_path(os.path.join(REPO, "tools", "prepare_dataset.py"), run_name="__main__")
    except SystemExit as e:
        return e.code
    return 0


def test_tool_sharded_run_and_merge(tmp_path, monkeypatch, capsys):
    csv_file = _dataset(str(tmp_path), n=4)
    out = tmp_path / "out"
    common = ["--csv", csv_file, "--output", out, "--size", *HALF, "--workers", 1]
    assert _tool(monkeypatch, "csv", *common, "--shard", "0/2") == 2
    assert "--shard '0/2': I must be between 1 and N = 2 (shards are numbered from 1" in capsys.readouterr().err
    assert _tool(monkeypatch, "csv", *common, "--shard", "1/2") == 0
    assert _tool(monkeypatch, "merge", "--output", out) == 2
    assert "shard(s) 2/2 missing" in capsys.readouterr().err
    assert _tool(monkeypatch, "csv", *common, "--shard", "2/2") == 0
    assert _tool(monkeypatch, "merge", "--output", out) == 0
    merged = json.load(open(out / "prepared" / "report.json"))
    assert (merged["inputs"], merged["used"], merged["prepared"]) == (4, 4, 4)
    merged_records = json.load(open(out / "prepared" / "records.json"))
    assert _tool(monkeypatch, "csv", *common) == 0  # the unsharded run over the same cache: all cached
    report = json.load(open(out / "prepared" / "report.json"))
    assert (report["cached"], report["prepared"], report["cache_version"]) == (4, 0, CACHE_VERSION)
    assert json.load(open(out / "prepared" / "records.json")) == merged_records


@pytest.mark.parametrize("chest_wall", ["left", "right"])
def test_block_resize_keeps_geometry_and_integer_input_gives_the_same_pixels(chest_wall):
    """A 2400 x 1500 image to 256 x 256 (blocks of 8 x 4 rows/columns, then INTER_AREA): the lesion lands where
    the transform says, to a pixel; uint16 input (what prepare reads) gives the float32 input's result."""
    from mammo_tl.data.preprocess import preprocess

    h, w = 2400, 1500
    img = np.full((h, w), 300, np.uint16)
    yy, xx = np.mgrid[0:h, 0:w]
    cx = 0 if chest_wall == "left" else w - 1
    img[((xx - cx) / (0.8 * w)) ** 2 + ((yy - h / 2) / (0.45 * h)) ** 2 <= 1] = 2000
    lesion = [410, 1003, 530, 1201] if chest_wall == "left" else [970, 1003, 1090, 1201]  # x1, y1, x2, y2
    img[lesion[1]:lesion[3], lesion[0]:lesion[2]] = 4000
    out, t = preprocess(img.astype(np.float32), size=(256, 256), crop=True, canonical_flip=True)
    out_int, t_int = preprocess(img, size=(256, 256), crop=True, canonical_flip=True)
    np.testing.assert_array_equal(out_int, out)
    assert t_int == t and t.flip == (chest_wall == "right")
    x1, y1, x2, y2 = t.crop
    assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
    ys, xs = np.nonzero(out > 3000)  # more than half lesion
    found = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    np.testing.assert_allclose(t.apply_boxes([lesion])[0], found, atol=1.0)


@pytest.mark.parametrize(("args", "message"), [
    (["--size", 0, 128], "--size 0 128: each side must be between 1 and 8192 pixels"),
    (["--size", 100000, 100000], "--size 100000 100000: each side must be between 1 and 8192 pixels"),
    (["--workers", -3], "--workers -3: expected 1 or more processes"),
])
def test_tool_checks_size_and_workers_before_any_work(tmp_path, monkeypatch, capsys, args, message):
    csv_file = _dataset(str(tmp_path), n=2)
    out = tmp_path / "out"
    assert _tool(monkeypatch, "csv", "--csv", csv_file, "--output", out, *args) == 2
    err = capsys.readouterr().err
    assert f"prepare_dataset.py: error: {message}" in err and "Traceback" not in err
    assert not (out / "records.json").exists()


def test_tool_names_a_bad_csv_row_without_a_traceback(tmp_path, monkeypatch, capsys):
    _write(tmp_path / "a.png", _pixels(1))
    csv_file = tmp_path / "data.csv"
    csv_file.write_text(HEADER + "p1,a.png,L,CC,2,\n")
    assert _tool(monkeypatch, "csv", "--csv", csv_file, "--output", tmp_path / "out", "--workers", 1) == 2
    err = capsys.readouterr().err
    assert "prepare_dataset.py: error: data.csv row 1: label '2' must be 0 or 1" in err
    assert "Traceback" not in err


def test_a_box_past_the_edge_is_clipped_and_counted_not_the_image_dropped(tmp_path):
    """As datasets/README.md says: a box that extends past the image's edge is clipped to it and counted; a box
    with nothing inside the image skips that image."""
    _write(tmp_path / "a.png", _pixels(1))
    _write(tmp_path / "b.png", _pixels(2))
    csv_file = tmp_path / "data.csv"
    csv_file.write_text(HEADER + f"p1,a.png,L,CC,1,{W - 10} 5 {W + 30} 20\n"
                        + f"p2,b.png,L,CC,1,{W + 5} 5 {W + 30} 20\n")
    report = SkipReport("data.csv")
    records = load_csv_dataset(str(csv_file), report=report)
    assert [os.path.basename(r["file_name"]) for r in records] == ["a.png"]
    assert records[0]["annotations"][0]["bbox"] == [W - 10.0, 5.0, float(W), 20.0]
    assert report.notes["box clipped to the image"] == 1
    assert [(os.path.basename(w.split("(")[1].rstrip(")")), r) for w, r in report.skipped] == [
        ("b.png", f"box [{float(W + 5)}, 5.0, {float(W + 30)}, 20.0] outside the {W}x{H} image")]


def test_two_files_of_one_patient_side_and_view_are_reported_not_silently_kept(tmp_path, monkeypatch, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    _write(tmp_path / "a" / "x.png", _pixels(1))
    _write(tmp_path / "b" / "x.png", _pixels(2))
    _write(tmp_path / "c.png", _pixels(3))
    csv_file = tmp_path / "data.csv"
    csv_file.write_text(HEADER + "p1,a/x.png,L,CC,0,\nP1 ,b/x.png,L,CC,0,\np1,c.png,L,MLO,0,\n")
    out = tmp_path / "out"
    assert _tool(monkeypatch, "csv", "--csv", csv_file, "--output", out, "--size", *HALF, "--workers", 1) == 0
    err = capsys.readouterr().err
    assert (f"prepare_dataset.py: warning: 1 patient/side/view(s) are shown by more than one file, e.g. p1 L CC: "
            f"{tmp_path / 'a' / 'x.png'}, {tmp_path / 'b' / 'x.png'}; kept as separate images") in err
    report = json.load(open(out / "conversion_report.json"))
    assert report["notes"] == {"patient/side/view shown by more than one file (kept as separate images)": 1}
    assert report["kept"] == 3
