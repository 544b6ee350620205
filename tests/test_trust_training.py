"""Training and data commands trust nothing by path alone: one writer per folder (train_net, prepare), --resume
only with the run's own config, merge only of cache files that still match their sources, patient ids spelled
two ways kept as one patient, stale folds refused before training, an unevaluated run never aggregated, and an
ablation run reused only for the same records and the same image content."""
import copy
import json
import os
import shutil
import subprocess
import sys

import cv2
import pytest
import yaml

from mammo_tl.config import flatten_config
from mammo_tl.data.datasets.common import DatasetError, check_patient_disjoint, load_records, save_records
from mammo_tl.data.prepare import SHARD_LOCK, PrepareError, merge_shards
from mammo_tl.data.splits import kfold_split, patient_id_variants, random_split
from mammo_tl.experiments.cross_validation import CrossValidationError, run_folds
from mammo_tl.engine.run_inputs import RunMismatch, check_inputs, run_inputs
from mammo_tl.experiments.rows import expected_config
from mammo_tl.engine.launcher import check_resume
from mammo_tl.engine.preflight import ConfigError
from mammo_tl.files import FolderLock
from tests.common import REPO, config_path
from tests.test_gallery import write_fake_run
from tests.test_prepare import HALF, _dataset, _expected_png, _pixels, _prepare, _tool, _write
from tests.test_records import TRAIN_OPTS


def _run(*args, cwd=REPO, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _here(*args):
    """``python args...`` run in this process (tests/common.py run_in_process: the same arguments, working folder,
    exit status, standard output and error), for commands checked for what they print and refuse, not for their
    process: a Python start-up with torch and detectron2 (3.4 s of CPU) saved each. Folder locks, kills and
    the config files that must not unpickle (tests/test_config_safety.py) keep processes of their own."""
    from tests.common import run_in_process

    return run_in_process(list(args))


# ---- train_net: one writer per OUTPUT_DIR, --resume only with the run's own config ----------------------------------

@pytest.mark.slow
def test_train_net_into_a_held_folder_stops_before_any_work(tmp_path):
    out = str(tmp_path / "run")
    with FolderLock(out, "predict"):
        p = _run("tools/train_net.py", "--config-file", config_path("synthetic/d_tl_similarity.yaml"),
                 "OUTPUT_DIR", out, "MODEL.DEVICE", "cpu")
        assert p.returncode == 1, p.stderr[-2000:]
        assert f"train_net.py: {out} is in use by predict (pid {os.getpid()} on " in p.stderr
        assert "Traceback" not in p.stderr
        assert sorted(os.listdir(out)) == [".mammo_tl.lock"]  # no log.txt, no config.yaml
    p = _here("tools/train_net.py", "--config-file", config_path("synthetic/d_tl_similarity.yaml"), "--eval-only",
              "OUTPUT_DIR", out, "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(tmp_path / "none.pth"))
    assert "is in use" not in p.stderr  # released: the next run gets past the lock (and stops at the weights)
    assert "MODEL.WEIGHTS" in p.stderr and "file not found" in p.stderr


def _saved_run(tmp_path, rel, *opts):
    out = str(tmp_path / "run")
    cfg = expected_config(config_path(rel), ["OUTPUT_DIR", out, *opts])
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write("model_0000009.pth")
    return out, cfg


def test_resume_with_another_config_refused_naming_the_keys(tmp_path):
    out, _ = _saved_run(tmp_path, "synthetic/d_tl_similarity.yaml")
    saved = os.path.join(out, "config.yaml")
    before = open(saved, "rb").read()
    a = flatten_config(yaml.safe_load(before))
    b = flatten_config(yaml.safe_load(expected_config(config_path("synthetic/a_positives_only.yaml"),
                                                      ["OUTPUT_DIR", out]).dump()))
    expected = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    assert expected  # the two rows differ (a: no negatives, no top likelihood, no similarity)
    p = _here("tools/train_net.py", "--config-file", config_path("synthetic/a_positives_only.yaml"), "--resume",
             "OUTPUT_DIR", out)
    assert p.returncode == 1, p.stderr[-2000:]
    assert f"--resume: {out} holds a run of another config: {saved} differs in {len(expected)} key(s): " in p.stderr
    for k in expected[:8]:
        assert f"{k}: {a.get(k, '(absent)')!r} there, {b.get(k, '(absent)')!r} here" in p.stderr
    assert open(saved, "rb").read() == before  # not overwritten
    assert sorted(os.listdir(out)) == ["config.yaml", "last_checkpoint"]


def test_resume_check_ignores_device_workers_and_iterations_of_a_step_schedule(tmp_path, caplog):
    out, _ = _saved_run(tmp_path, "synthetic/d_tl_similarity.yaml", "MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", "10")
    same = expected_config(config_path("synthetic/d_tl_similarity.yaml"),
                           ["OUTPUT_DIR", out, "MODEL.DEVICE", "cuda", "DATALOADER.NUM_WORKERS", "7",
                            "SOLVER.MAX_ITER", "10"])
    check_resume(same)  # another machine: allowed
    longer = expected_config(config_path("synthetic/d_tl_similarity.yaml"),
                             ["OUTPUT_DIR", out, "SOLVER.MAX_ITER", "20"])
    assert longer.SOLVER.LR_SCHEDULER_NAME == "WarmupMultiStepLR"
    check_resume(longer)  # train longer: the rate of every iteration is fixed by SOLVER.STEPS
    assert f"--resume: SOLVER.MAX_ITER 20 (was 10 in {out}" in caplog.text
    other = expected_config(config_path("synthetic/d_tl_similarity.yaml"),
                            ["OUTPUT_DIR", out, "SOLVER.MAX_ITER", "20", "SOLVER.BASE_LR", "0.5"])
    with pytest.raises(ConfigError, match=r"differs in 1 key\(s\): SOLVER.BASE_LR: 0.0002 there, 0.5 here"):
        check_resume(other)
    os.remove(os.path.join(out, "config.yaml"))
    with pytest.raises(ConfigError, match="holds a checkpoint .* but no config.yaml"):
        check_resume(same)
    os.remove(os.path.join(out, "last_checkpoint"))
    check_resume(same)  # nothing to resume: a fresh start


def test_resume_with_more_iterations_of_a_cosine_schedule_refused(tmp_path):
    out, _ = _saved_run(tmp_path, "synthetic/d_tl_similarity.yaml", "SOLVER.MAX_ITER", "10",
                        "SOLVER.LR_SCHEDULER_NAME", "WarmupCosineLR")
    longer = expected_config(config_path("synthetic/d_tl_similarity.yaml"),
                             ["OUTPUT_DIR", out, "SOLVER.MAX_ITER", "20", "SOLVER.LR_SCHEDULER_NAME", "WarmupCosineLR"])
    with pytest.raises(ConfigError, match=r"differs in 1 key\(s\): SOLVER.MAX_ITER: 10 there, 20 here"):
        check_resume(longer)


# ---- prepare: one writer per OUTPUT; merge only of cache files that still match ----------------------------------

def test_prepare_into_a_held_folder_stops_before_any_work(tmp_path, monkeypatch, capsys):
    csv_file = _dataset(str(tmp_path), n=4)
    out = tmp_path / "out"
    common = ["--csv", csv_file, "--output", out, "--size", *HALF, "--workers", 1]
    with FolderLock(str(out), "train_net"):
        assert _tool(monkeypatch, "csv", *common) == 2
        assert f"{out} is in use by train_net (pid {os.getpid()} on " in capsys.readouterr().err
        assert _tool(monkeypatch, "csv", *common, "--shard", "1/2") == 2
        assert f"{out} is in use by train_net (pid {os.getpid()}" in capsys.readouterr().err
        assert _tool(monkeypatch, "merge", "--output", out) == 2
        assert sorted(os.listdir(out)) == [".mammo_tl.lock"]  # nothing converted or prepared
    with FolderLock(str(out), "prepare_dataset csv --shard 1/2", name=SHARD_LOCK.format(1, 2)):
        assert _tool(monkeypatch, "csv", *common, "--shard", "2/2") == 0  # shards run side by side
        assert _tool(monkeypatch, "merge", "--output", out) == 2
        assert "is in use by prepare_dataset csv --shard 1/2 (pid" in capsys.readouterr().err
        assert _tool(monkeypatch, "csv", *common) == 2
    assert not os.path.exists(out / "prepared" / "records.json")
    assert _tool(monkeypatch, "csv", *common) == 0  # free again
    assert not any(n.endswith(".lock") for n in os.listdir(out))


def _sharded(tmp_path):
    records = load_csv_dataset_of(tmp_path)
    out = tmp_path / "prep"
    for i in (1, 2):
        _prepare(records, out, shard=(i, 2))
    return records, out


def load_csv_dataset_of(tmp_path):
    from mammo_tl.data.datasets import load_csv_dataset

    return load_csv_dataset(_dataset(str(tmp_path)))


def test_merge_after_the_cache_was_pruned_keeps_the_good_records(tmp_path):
    records, out = _sharded(tmp_path)
    merged, _ = merge_shards(records, str(out))
    good = open(out / "records.json", "rb").read()
    victim = merged[1]["file_name"]
    os.remove(victim)  # what --prune-stale of a run with other options, or a clean-up, does
    with pytest.raises(PrepareError) as e:
        merge_shards(records, str(out))
    from mammo_tl.data.prepare import shard_of

    shard = shard_of(merged[1]["original_file_name"], 2)
    assert f"{victim}: missing (pruned or deleted)" in str(e.value)
    assert f"records.json is left as it was; run shard(s) {shard}/2 again" in str(e.value)
    assert open(out / "records.json", "rb").read() == good
    _prepare(records, out, shard=(shard, 2))
    again, _ = merge_shards(records, str(out))
    assert os.path.exists(again[1]["file_name"])


def test_merge_refuses_a_png_made_from_a_source_that_changed(tmp_path):
    records, out = _sharded(tmp_path)
    source = records[0]["file_name"]
    new_pixels = _pixels(42)
    _write(source, new_pixels)  # same size, new content and mtime
    with pytest.raises(PrepareError, match=rf"{source}: source changed since its shard prepared it"):
        merge_shards(records, str(out))
    from mammo_tl.data.prepare import shard_of

    _prepare(records, out, shard=(shard_of(source, 2), 2))
    merged, _ = merge_shards(records, str(out))
    png = cv2.imread(merged[0]["file_name"], cv2.IMREAD_UNCHANGED)
    assert (png == _expected_png(new_pixels)).all()


# ---- splits: patient ids spelled two ways are one patient ------------------------------------------------------

def _records_with_variants():
    recs = []
    for k in range(8):
        pid = f"P{k}"
        for j, written in enumerate((pid, pid.lower() + " " if k == 0 else pid, pid.lower() if k == 3 else pid)):
            recs.append({"file_name": f"{k}_{j}.png", "image_id": f"{k}_{j}", "patient_id": written,
                         "height": 10, "width": 10, "laterality": "L", "view": "CC",
                         "annotations": [{"bbox": [1, 1, 5, 5]}] if k % 2 == 0 else []})
    return recs


def _saved_variants(tmp_path):
    """_records_with_variants() saved as a records JSON in tmp_path; its path."""
    recs = _records_with_variants()
    for r in recs:
        r["annotations"] = [dict(a, bbox_mode=0, category_id=0) for a in r["annotations"]]
    path = str(tmp_path / "records.json")
    save_records(recs, path)
    return path


def _side_of(split, ids):
    return {i: ("test" if any(r["image_id"] == i for r in split[1]) else "train") for i in ids}


def test_patient_id_variants_stay_on_one_side_of_every_split():
    recs = _records_with_variants()
    assert patient_id_variants(recs) == {"p0": ["P0", "p0 "], "p3": ["P3", "p3"]}
    for seed in range(8):
        for k, split in enumerate(kfold_split(recs, 2, seed=seed)):
            check_patient_disjoint({"train": split[0], "test": split[1]})
            for patient in ("0", "3"):
                sides = set(_side_of(split, [f"{patient}_{j}" for j in range(3)]).values())
                assert len(sides) == 1, (seed, k, patient)
        split = random_split(recs, 0.5, seed=seed)
        for patient in ("0", "3"):
            assert len(set(_side_of(split, [f"{patient}_{j}" for j in range(3)]).values())) == 1, seed


def test_disjointness_check_sees_ids_differing_in_case_or_spaces():
    a = {"patient_id": "AB12", "image_id": 1}
    b = {"patient_id": "ab12 ", "image_id": 2}
    with pytest.raises(DatasetError, match=r"1 patient\(s\) appear in more than one split: \('AB12' in train; "
                                           r"'ab12 ' in test: one patient, ids differing in case or spaces\)"):
        check_patient_disjoint({"train": [a], "test": [b]})


def test_split_tool_reports_the_variants(tmp_path):
    path = _saved_variants(tmp_path)
    p = _here("tools/split_dataset.py", "random", "--records", path, "--output", str(tmp_path / "s"),
             "--test-fraction", "0.5")
    assert p.returncode == 0, p.stderr
    assert (f"{path}: 2 patient(s) have ids written in more than one way (case or spaces), each kept as one "
            "patient: 'P0' = 'p0'; 'P3' = 'p3'") in p.stdout  # the records file strips spaces
    assert "8 patients (4 positive, 4 negative)" in p.stdout


def test_split_check_refuses_one_file_given_twice(tmp_path):
    """`check a.json a.json` shares every patient with itself: refused, not passed as one split."""
    path = _saved_variants(tmp_path)
    alias = str(tmp_path / "." / "records.json")
    p = _run("tools/split_dataset.py", "check", path, alias)
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"split_dataset.py check: one file given more than once: {path} = {alias}" in p.stderr
    assert "no patient appears" not in p.stdout


# ---- k folds: a split into fewer folds never leaves old folds to train --------------------------------------------

def test_kfold_into_a_folder_with_more_folds_refused(tmp_path):
    path = _saved_variants(tmp_path)
    folds = str(tmp_path / "folds")
    first = _run("tools/split_dataset.py", "kfold", "--records", path, "--output", folds, "--folds", "4")  # as typed
    assert first.returncode == 0
    p = _here("tools/split_dataset.py", "kfold", "--records", path, "--output", folds, "--folds", "2")
    assert p.returncode == 1
    assert f"split_dataset.py kfold: {folds} holds fold2/, fold3/ from an earlier split into more than 2 folds" \
        in p.stderr
    assert json.load(open(os.path.join(folds, "fold0", "test.json")))  # the 4-fold split is untouched


def test_cross_validate_refuses_stale_folds_before_training(tmp_path):
    """Folds of a 4-fold split overwritten in part by a 2-fold split (as an earlier split_dataset left them)."""
    recs = load_records_of(tmp_path)
    folds = tmp_path / "folds"
    for k, (train, test) in enumerate(kfold_split(recs, 4, seed=0)):
        for side, rs in (("train", train), ("test", test)):
            save_records(rs, str(folds / f"fold{k}" / f"{side}.json"))
    for k, (train, test) in enumerate(kfold_split(recs, 2, seed=0)):
        for side, rs in (("train", train), ("test", test)):
            save_records(rs, str(folds / f"fold{k}" / f"{side}.json"))
    never = [sys.executable, "-c", "raise SystemExit(3)"]  # a training would fail: it must not be reached
    with pytest.raises(CrossValidationError, match="the folds' test sets do not hold every image once"):
        run_folds(config_path("inbreast/d_tl_similarity.yaml"), str(folds), str(tmp_path / "cv"), TRAIN_OPTS,
                  train_command=never)
    assert not (tmp_path / "cv").exists()


def load_records_of(tmp_path):
    path = _saved_variants(tmp_path)
    return load_records(path, check_files=False)


# ---- report --aggregate: every run evaluated ----------------------------------------------------------------------

def test_aggregate_refuses_a_run_without_eval_results(tmp_path):
    labels = {"A": 1, "B": 0}
    scores = {"A": 0.9, "B": 0.1}
    runs = [write_fake_run(str(tmp_path / f"seed_{s}"), labels, scores, seed=s, ap50=0.5 if s == 0 else None)
            for s in (0, 1)]
    p = _here("tools/report.py", "--aggregate", f"a={runs[0]},{runs[1]}", "--output", str(tmp_path / "rep"))
    assert p.returncode == 2
    assert f"error: {runs[1]}: no inference/eval_results.json (the run was not evaluated" in p.stderr
    assert not (tmp_path / "rep" / "results.json").exists()


# ---- train_net --resume: only on the data the run started with; a split is not overwritten by accident -----------

def _copied_tiny_sets(tmp_path):
    """The tiny sets' images copied under tmp_path, their records saved as train.json / test.json."""
    from detectron2.data import DatasetCatalog

    paths = {}
    for split in ("train", "test"):
        recs = copy.deepcopy(DatasetCatalog.get(f"mammo_synth_tiny_{split}"))
        os.makedirs(tmp_path / "img" / split, exist_ok=True)
        for r in recs:
            dst = str(tmp_path / "img" / split / os.path.basename(r["file_name"]))
            shutil.copy2(r["file_name"], dst)
            r["file_name"] = dst
        paths[split] = str(tmp_path / f"{split}.json")
        save_records(recs, paths[split])
    return paths


@pytest.mark.slow
def test_resume_refuses_data_changed_since_the_run_started(tmp_path, tiny_datasets):
    """A split rewritten between a kill and --resume (a test patient moved into training) and an image whose
    content changed are refused, naming the change, before any iteration; the same data again resumes. The
    training and the resumed training are processes of their own, as a user runs them; the two refusals run
    in this process (run_in_process: the same arguments, exit status and standard error), which saves two
    Python start-ups with torch and detectron2 (the records are read from their files at each run, never
    kept from an earlier one)."""
    from tests.common import run_in_process

    paths = _copied_tiny_sets(tmp_path)
    out = tmp_path / "run"

    def train(max_iter, *extra, in_process=False):
        argv = ["tools/train_net.py", "--config-file", config_path("synthetic/a_positives_only.yaml"), *extra,
                "OUTPUT_DIR", str(out), *TRAIN_OPTS, "SOLVER.MAX_ITER", str(max_iter), "SOLVER.CHECKPOINT_PERIOD",
                "1", "DATASETS.REGISTER_JSON", f"['resume_train={paths['train']}', 'resume_test={paths['test']}']",
                "DATASETS.TRAIN", "('resume_train',)", "DATASETS.TEST", "('resume_test',)"]
        return run_in_process(argv) if in_process else _run(*argv)

    p = train(2)
    assert p.returncode == 0, p.stderr[-3000:]
    recorded = json.load(open(out / "run_inputs.json"))
    assert len(recorded["images"]) == len(load_records(paths["train"])) + len(load_records(paths["test"]))
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    original = {k: open(v, "rb").read() for k, v in paths.items()}

    # the split rewritten: one test image (and so its patient) moved into training
    train_recs, test_recs = json.load(open(paths["train"])), json.load(open(paths["test"]))
    moved = dict(test_recs[0], image_id=max(r["image_id"] for r in train_recs) + 1000)
    json.dump(train_recs + [moved], open(paths["train"], "w"))
    json.dump(test_recs[1:], open(paths["test"], "w"))
    p = train(3, "--resume", in_process=True)
    assert p.returncode == 1, p.stderr[-3000:]
    assert (f"train_net.py: --resume: {out} holds a run trained or evaluated on other records of its "
            "DATASETS.TRAIN/TEST/VALIDATION sets") in p.stderr
    assert "DATASETS.TRAIN ('resume_train',), DATASETS.TEST ('resume_test',)" in p.stderr
    assert "Traceback" not in p.stderr
    assert not (out / "model_0000002.pth").exists() and json.load(open(out / "run_inputs.json")) == recorded

    # the split restored, one image's pixels changed
    for k, v in paths.items():
        open(v, "wb").write(original[k])
    image = load_records(paths["train"])[0]["file_name"]
    before = open(image, "rb").read()
    px = cv2.imread(image, cv2.IMREAD_UNCHANGED)
    px[0, 0] = px[0, 0] + 1
    assert cv2.imwrite(image, px)
    p = train(3, "--resume", in_process=True)
    assert p.returncode == 1, p.stderr[-3000:]
    assert (f"--resume: {out} holds a run made from other image content: 1 of {len(recorded['images'])} image "
            f"file(s) its records name changed since (or are gone), e.g. ['{image}']") in p.stderr
    assert not (out / "model_0000002.pth").exists()

    open(image, "wb").write(before)  # the same content again (a new mtime): resumed
    p = train(3, "--resume")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Starting training from iteration 2" in p.stderr + p.stdout
    assert (out / "model_0000002.pth").exists()


def test_a_bad_image_that_is_not_the_first_of_its_kind_stops_train_net_before_training(tmp_path, tiny_datasets):
    """Preflight mapped one positive and one negative image; a damaged third image crashed the data loader at
    iteration 1 with tracebacks. Every image is decoded now: the run stops with a message naming it."""
    from tests.common import run_in_process

    paths = _copied_tiny_sets(tmp_path)
    records = load_records(paths["train"])
    positives = [r for r in records if r["annotations"]]
    bad = positives[2]["file_name"]
    with open(bad, "r+b") as f:  # a truncated PNG: its header is intact, its pixels are not
        f.truncate(os.path.getsize(bad) // 3)
    out = tmp_path / "run"
    p = run_in_process(["tools/train_net.py", "--config-file", config_path("synthetic/a_positives_only.yaml"),
                        "OUTPUT_DIR", str(out), *TRAIN_OPTS, "SOLVER.MAX_ITER", "2",
                        "DATASETS.REGISTER_JSON", f"['badimg_train={paths['train']}', 'badimg_test={paths['test']}']",
                        "DATASETS.TRAIN", "('badimg_train',)", "DATASETS.TEST", "('badimg_test',)"])
    assert p.returncode == 1, p.stderr[-3000:]
    assert (f"train_net.py: DATASETS.TRAIN: dataset 'badimg_train': 1 of {len(records)} image(s) cannot be read "
            f"as their records describe them: {bad} (") in p.stderr
    assert "Traceback" not in p.stderr
    assert not (out / "metrics.json").exists()


def test_an_unregistered_data_set_is_still_preflights_message(tmp_path):
    """Recording the run's inputs (before the first process starts) leaves a data set it cannot load to preflight,
    whose message names the key."""
    p = _run("tools/train_net.py", "--config-file", config_path("synthetic/a_positives_only.yaml"), "OUTPUT_DIR",
             str(tmp_path / "run"), *TRAIN_OPTS, "DATASETS.TRAIN", "('nope',)")  # a process: its own loggers
    assert p.returncode == 1, p.stderr[-3000:]
    assert "train_net.py: DATASETS.TRAIN: dataset 'nope' is not registered" in p.stderr
    assert "Traceback" not in p.stderr


def test_split_refuses_to_overwrite_a_split_without_overwrite(tmp_path):
    path = _saved_variants(tmp_path)
    split = tmp_path / "split"
    assert _run("tools/split_dataset.py", "random", "--records", path, "--output", str(split), "--test-fraction",
                "0.5", "--seed", "0").returncode == 0  # as typed, a process; the refusals below in this one
    before = {n: (split / n).read_bytes() for n in ("train.json", "test.json")}
    p = _here("tools/split_dataset.py", "random", "--records", path, "--output", str(split), "--test-fraction",
             "0.5", "--seed", "1")
    assert p.returncode == 1, p.stdout + p.stderr
    assert (f"split_dataset.py random: {split} already holds a split ({split / 'train.json'}, "
            f"{split / 'test.json'})") in p.stderr
    assert "--overwrite" in p.stderr and "Traceback" not in p.stderr
    assert {n: (split / n).read_bytes() for n in before} == before
    p = _here("tools/split_dataset.py", "random", "--records", path, "--output", str(split), "--test-fraction",
             "0.5", "--seed", "1", "--overwrite")
    assert p.returncode == 0, p.stderr
    assert {n: (split / n).read_bytes() for n in before} != before
    folds = tmp_path / "folds"
    assert _here("tools/split_dataset.py", "kfold", "--records", path, "--output", str(folds),
                "--folds", "2").returncode == 0
    p = _here("tools/split_dataset.py", "kfold", "--records", path, "--output", str(folds), "--folds", "2",
             "--seed", "3")
    assert p.returncode == 1 and f"{folds / 'fold0' / 'train.json'}" in p.stderr


# ---- run_ablation: reuse keyed by records and image content; refusals are messages ---------------------------------

def _ablation_case(tmp_path, tiny_datasets, tag):
    """A finished run (fake outputs) of config (a) on copies of the tiny sets' images, as run_ablation checks it."""
    paths = _copied_tiny_sets(tmp_path)
    opts = [*TRAIN_OPTS, "SOLVER.MAX_ITER", "2", "DATASETS.REGISTER_JSON",
            f"['{tag}_train={paths['train']}', '{tag}_test={paths['test']}']",
            "DATASETS.TRAIN", f"('{tag}_train',)", "DATASETS.TEST", f"('{tag}_test',)"]
    config = config_path("synthetic/a_positives_only.yaml")
    output = tmp_path / "ablation"
    run = output / "a_positives_only"
    cfg = expected_config(config, ["OUTPUT_DIR", str(run), "TEST.PATIENT.BOOTSTRAP", "20", *opts])
    os.makedirs(run / "inference")
    (run / "config.yaml").write_text(cfg.dump())
    check_inputs(str(run), run_inputs(cfg), finished=False)  # recorded as a run starts
    (run / "model_final.pth").write_bytes(b"x")
    (run / "inference" / "eval_results.json").write_text("{}")
    cmd = ["tools/run_ablation.py", "--output", str(output), "--bootstrap", "20", "--configs", config, "--opts", *opts]
    return cfg, run, paths, cmd


def test_ablation_refuses_a_run_whose_images_changed(tmp_path, tiny_datasets, monkeypatch):
    cfg, run, paths, cmd = _ablation_case(tmp_path, tiny_datasets, "trust_images")
    recorded = json.load(open(run / "run_inputs.json"))
    image = load_records(paths["test"])[0]["file_name"]
    assert recorded["images"][image][2] == __import__("mammo_tl.files", fromlist=["x"]).sha256_file(image)
    check_inputs(str(run), run_inputs(cfg), finished=True)  # unchanged: reused
    before = (run / "run_inputs.json").read_bytes()
    os.utime(image, ns=(os.stat(image).st_atime_ns, os.stat(image).st_mtime_ns + 10**9))  # same content, new mtime
    check_inputs(str(run), run_inputs(cfg), finished=True)  # reused, its record left as the run made it
    assert (run / "run_inputs.json").read_bytes() == before
    # this machine's mtimes kept apart (run_inputs.local.json): the next reuse hashes no image again
    assert json.load(open(run / "run_inputs.local.json"))[image][:2] == [os.stat(image).st_size,
                                                                       os.stat(image).st_mtime_ns]
    import mammo_tl.engine.run_inputs as ri

    hashed = []
    monkeypatch.setattr(ri, "sha256_file", lambda p: hashed.append(p) or __import__("mammo_tl.files", fromlist=[
        "x"]).sha256_file(p))
    check_inputs(str(run), run_inputs(cfg), finished=True)
    assert hashed == [] and (run / "run_inputs.json").read_bytes() == before
    px = cv2.imread(image, cv2.IMREAD_UNCHANGED)
    px[0, 0] = px[0, 0] + 1
    assert cv2.imwrite(image, px)  # the records are the same; one image's content is not
    with pytest.raises(RunMismatch, match=r"1 of \d+ image file\(s\) its records name changed since"):
        check_inputs(str(run), run_inputs(cfg), finished=True)
    p = _here(*cmd)
    assert p.returncode == 2, p.stderr[-2000:]
    assert f"run_ablation.py: error: {run} holds a run made from other image content" in p.stderr
    assert image in p.stderr and "Traceback" not in p.stderr


def test_ablation_refuses_changed_records_with_a_message(tmp_path, tiny_datasets):
    _, run, paths, cmd = _ablation_case(tmp_path, tiny_datasets, "trust_records")
    records = json.load(open(paths["test"]))
    json.dump(records[1:], open(paths["test"], "w"))
    p = _here(*cmd)
    assert p.returncode == 2, p.stderr[-2000:]
    assert f"run_ablation.py: error: {run} holds a run trained or evaluated on other records" in p.stderr
    assert "Traceback" not in p.stderr
