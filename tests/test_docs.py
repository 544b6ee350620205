"""The docs say what the code does: the README's two commands are the Makefile's, every config key is in
docs/configs.md with its default, the checker of documented commands reads markdown as a shell reads its
commands, and the documented commands no other test runs are run here, as typed, on tiny data (in the test
process with runpy where the command line itself is not what is tested: process start-up is paid once)."""
import ast
import csv
import glob
import hashlib
import json
import os
import re
import runpy
import shutil
import subprocess
import sys

import cv2
import pytest

from tests.common import REPO, TINY_OPTS, breast_phantom, config_path
from tests.doc_commands import checker
from tests.doc_commands.checker import Shape, command_shape, extract, make_recipes, not_run, script_shape

PAGE = r"""# A page

Run `make demo`, or by hand `python tools/demo.py --output out --seeds 0 1` (prose: `tools/predict.py`,
`--min-score`, `tools/report.py` adds a table).

```bash
# a comment line
.venv/bin/python tools/train_net.py --config-file configs/x.yaml \
    --num-gpus 2 SOLVER.IMS_PER_BATCH 4   # 2 GPUs
OMP_NUM_THREADS=1 python bench/train_step.py --iters 10 && echo done
cd somewhere; PYTHONPATH=. python tools/split_dataset.py kfold --records r.json --folds 5
```

```yaml
MODEL:
  WEIGHTS: "python tools/not_a_command.py --x"
```

A command in an indented block, after a blank line:

    .venv/bin/python tools/prepare_dataset.py csv --csv a.csv \
        --output datasets/own_csv --size 512 512
    images/<patient>.png   not a command

| table | `python tools/convert_weights.py [--trusted] IN.pkl OUT.pth` |
|---|---|

```
mammo_tl/data/  the reader's (predict's input files), not shell
```
"""


def test_extract_reads_blocks_continuations_comments_and_inline_spans():
    found = [(c.line, str(c.shape)) for c in extract(PAGE, "page.md")]
    assert found == [
        (3, "make demo"),
        (3, "tools/demo.py --output --seeds"),
        (8, "tools/train_net.py --config-file --num-gpus SOLVER.IMS_PER_BATCH"),
        (10, "bench/train_step.py --iters"),
        (11, "tools/split_dataset.py kfold --folds --records"),
        (21, "tools/prepare_dataset.py csv --csv --output --size"),
        (25, "tools/convert_weights.py"),  # [--trusted] is optional: not part of the shape
    ]
    first = extract(PAGE, "page.md")[2]
    assert first.text == (".venv/bin/python tools/train_net.py --config-file configs/x.yaml --num-gpus 2 "
                          "SOLVER.IMS_PER_BATCH 4 # 2 GPUs")
    assert str(first).startswith("page.md:8: ")


def test_a_command_that_a_shell_cannot_read_is_an_error_naming_file_and_line():
    with pytest.raises(checker.DocError, match=r"bad\.md:3: .*No closing quotation"):
        extract("x\n```bash\npython tools/predict.py --input 'a\n```\n", "bad.md")


def test_shapes_and_coverage():
    doc = command_shape(["python", "tools/predict.py", "--config-file", "c", "--input", "a", "b", "--output", "o",
                         "MODEL.WEIGHTS", "w"])
    assert doc == Shape("tools/predict.py", None, frozenset({"--config-file", "--input", "--output"}),
                        frozenset({"MODEL.WEIGHTS"}))
    # a test's run with more options covers it; one without a documented option or key does not
    assert doc.covered_by(script_shape("tools/predict.py", ["--config-file", "c", "--input", "a", "--output", "o",
                                                            "--min-score", "0", "MODEL.WEIGHTS", "w"]))
    assert not doc.covered_by(script_shape("tools/predict.py", ["--config-file", "c", "--input", "a", "--output",
                                                                "o"]))
    assert not doc.covered_by(script_shape("tools/report.py", ["--config-file", "c", "--input", "a", "--output",
                                                               "o", "MODEL.WEIGHTS", "w"]))
    # subcommands only for the scripts that have them; --opt=value is the option --opt
    assert script_shape("tools/split_dataset.py", ["check", "a.json"]).sub == "check"
    assert script_shape("tools/convert_weights.py", ["in", "out"]).sub is None
    assert script_shape("tools/demo.py", ["--output=x"]).flags == {"--output"}


def test_not_run_resolves_make_through_the_makefile_and_names_what_ran(tmp_path):
    makefile = tmp_path / "Makefile"
    makefile.write_text("PY := .venv/bin/python\n.PHONY: demo test\n\ndemo: install\n"
                        "\t$(PY) tools/demo.py --output output/demo\n\ntest: install\n\t$(PY) -m pytest tests\n")
    recipes = make_recipes(str(makefile))
    assert recipes["demo"] == [Shape("tools/demo.py", None, frozenset({"--output"}), frozenset())]
    assert recipes["test"] == []
    commands = extract("```bash\nmake demo\nmake test\nmake nothing\npython tools/report.py --run a=b\n```\n", "p.md")
    runs = [(script_shape("tools/report.py", ["--run", "a=b", "--output", "o"]), "t")]
    missing = {c.text: why for c, why in not_run(commands, runs, recipes, exempt={"make test": "the suite"})}
    assert missing == {"make demo": "no test ran tools/demo.py --output",
                       "make nothing": "the Makefile has no target 'nothing'"}
    runs.append((script_shape("tools/demo.py", ["--output", "x", "--seeds", "0"]), "t"))
    assert [c.text for c, _ in not_run(commands, runs, recipes, exempt={"make test": "the suite"})] == ["make nothing"]
    # a run of the script with other options is named, to show what is missing
    (_c, why), = not_run(extract("`python tools/report.py --aggregate a=b`", "p.md"), runs, recipes, exempt={})
    assert why == "no test ran tools/report.py --aggregate; tests ran: tools/report.py --output --run"


def test_undocumented_runs_and_options():
    commands = extract("```bash\npython tools/report.py --run a=b --output o\n```\n", "p.md")
    runs = [(script_shape("tools/report.py", ["--run", "a=b", "--output", "o", "--bootstrap", "20"]), "t1"),
            (script_shape("tools/report.py", ["--run", "a=b", "--output", "o", "--gallery", "2"]), "t2"),
            (script_shape("tools/demo.py", ["--output", "o"]), "t3")]
    doc_text = "python tools/report.py --run a=b --output o\n`--gallery K` draws ..."
    found = [(str(s), t, why) for s, t, why in checker.undocumented(runs, commands, doc_text)]
    assert found == [("tools/report.py --bootstrap --output --run", "t1", "options no doc mentions: --bootstrap"),
                     ("tools/demo.py --output", "t3", "no doc shows tools/demo.py")]
    # an option a script passes only to a copy of itself is not a user's: not reported, and really hidden there
    bench = extract("```bash\npython bench/train_step.py --iters 4\n```\n", "b.md")
    child = [(script_shape("bench/train_step.py", ["--iters", "4", "--only", "method"]), "t4")]
    assert checker.undocumented(child, bench, "python bench/train_step.py --iters 4") == []
    for script, option in checker.INTERNAL_OPTIONS:
        source = open(os.path.join(REPO, script)).read()
        assert re.search(rf'add_argument\("{option}".*help=argparse.SUPPRESS', source), (script, option)


def test_sitecustomize_logs_a_script_and_its_arguments(tmp_path):
    log = tmp_path / "log.jsonl"
    script = tmp_path / "tools" / "x.py"
    script.parent.mkdir()
    # the script starts itself once more: that process is the script's, not the test's (not "direct")
    script.write_text("import subprocess, sys\nprint(sys.argv[1:])\n"
                      "if '--a' in sys.argv: subprocess.run([sys.executable, __file__, '--b'], check=True)\n")
    env = dict(os.environ, MAMMO_TL_COMMAND_LOG=str(log),
               PYTHONPATH=os.path.join(REPO, "tests", "doc_commands"))
    done = subprocess.run([sys.executable, str(script), "--a", "1"], env=env, capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert done.returncode == 0 and done.stdout.split("\n")[0] == "['--a', '1']", done.stderr
    subprocess.run([sys.executable, "-c", "pass"], env=env, check=True, timeout=60)  # -c: not logged
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["script"], e["argv"], e["cwd"], e["direct"]) for e in entries] == [
        (str(script), ["--a", "1"], str(tmp_path), True), (str(script), ["--b"], str(tmp_path), False)]
    assert checker.read_log(str(log), repo=str(tmp_path)) == [(script_shape("tools/x.py", ["--a", "1"]),
                                                              entries[0]["test"])]


def test_every_doc_command_is_read_and_every_exemption_is_used():
    commands = checker.doc_commands()
    files = {c.path for c in commands}
    assert {"README.md", "datasets/README.md", "docs/getting_started.md", "docs/inference.md"} <= files
    shapes = {c.shape for c in commands}
    unused = [text for shape, text in checker.exempt_shapes().items() if shape not in shapes]
    assert not unused, f"EXEMPT entries that no doc command has the shape of (remove them): {unused}"


def test_readme_opens_with_the_two_commands_and_the_makefile_runs_them():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    assert [line.split("#")[0].strip() for line in first_block.splitlines()] == ["make demo", "make test"]
    assert readme.index("```bash") < readme.index("\n## ")  # before the first section
    said = re.search(r"`make demo` runs `([^`]+)`", readme).group(1)

    def recipe(target):
        """What make would run for ``target`` from scratch (every prerequisite rebuilt), without running it."""
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "PYTEST_ARGS")}
        done = subprocess.run(["make", "-n", "-B", target], cwd=REPO, capture_output=True, text=True, timeout=60,
                              env=env)
        assert done.returncode == 0, done.stderr
        return [line.strip() for line in done.stdout.splitlines()]

    demo, test = recipe("demo"), recipe("test")
    assert demo[-1] == said == ".venv/bin/python tools/demo.py --output output/demo"
    assert test[-1] == ".venv/bin/python -m pytest tests"
    # both install what they need first: the venv, torch, detectron2, mammo_tl
    for steps in (demo, test):
        text = "\n".join(steps[:-1])
        assert "-m venv .venv" in text and "torch==" in text and "tools/install_detectron2.py" in text
        assert "-e '.[dev]'" in text


def test_make_variables_in_the_docs_are_the_makefiles():
    with open(os.path.join(REPO, "Makefile"), encoding="utf-8") as f:
        defined = set(re.findall(r"^([A-Z_]+)\s*\?=", f.read(), re.M))
    used = set()
    for path in checker.doc_files():
        with open(path, encoding="utf-8") as f:
            used |= {(m, os.path.relpath(path, REPO)) for m in re.findall(r"\bmake \w+ ([A-Z_]+)=", f.read())}
    assert used and {name for name, _ in used} <= defined, sorted(u for u in used if u[0] not in defined)


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def test_every_config_key_is_in_docs_configs_with_its_default():
    from detectron2.config import get_cfg

    from mammo_tl.config import flatten_config, get_mammo_tl_cfg

    ours, detectron2s = flatten_config(get_mammo_tl_cfg()), flatten_config(get_cfg())
    added = {k: v for k, v in ours.items() if k not in detectron2s}
    with open(os.path.join(REPO, "docs", "configs.md"), encoding="utf-8") as f:
        rows = re.findall(r"^\| `([A-Z0-9_.]+)` \| `([^`]*)` \|", f.read(), re.M)
    documented = dict(rows)
    assert len(documented) == len(rows), "a key is documented twice"
    assert set(documented) == set(added), (f"missing: {sorted(set(added) - set(documented))}, "
                                           f"not added by add_mammo_tl_config: {sorted(set(documented) - set(added))}")
    for key, text in documented.items():
        assert _plain(ast.literal_eval(text)) == _plain(added[key]), (key, text, added[key])


# ---- documented commands no other test runs, as typed, on tiny data ------------------------------------------

def _tool(monkeypatch, script, *args):
    """``python <script> args`` in this process (argv as typed, the script's folder first on sys.path); the
    exit status."""
    monkeypatch.setattr(sys, "argv", [script, *map(str, args)])
    monkeypatch.syspath_prepend(os.path.join(REPO, os.path.dirname(script)))
    try:
        runpy.run_path(os.path.join(REPO, script), run_name="__main__")
    except SystemExit as e:
        if isinstance(e.code, str):  # sys.exit("message"): the interpreter would print it and exit with 1
            print(e.code, file=sys.stderr)
        return e.code if isinstance(e.code, int) else 1
    return 0


def test_make_synthetic_with_dicom_then_split_check(tmp_path, monkeypatch, capsys):
    """datasets/README.md: tools/make_synthetic.py --output --positive --negative --dicom; docs/getting_started:
    tools/split_dataset.py check."""
    for name, seed in (("a", 3), ("b", 4)):
        assert _tool(monkeypatch, "tools/make_synthetic.py", "--output", tmp_path / name, "--positive", 1,
                     "--negative", 1, "--seed", seed, "--height", 192, "--width", 160, "--dicom") == 0
    pngs = sorted(glob.glob(str(tmp_path / "a" / "images" / "*.png")))
    dcms = sorted(glob.glob(str(tmp_path / "a" / "images" / "*.dcm")))
    assert pngs and [p[:-4] for p in pngs] == [d[:-4] for d in dcms]
    with open(tmp_path / "a" / "patients.csv") as f:
        assert sorted(int(r["label"]) for r in csv.DictReader(f)) == [0, 1]
    capsys.readouterr()
    a, b = tmp_path / "a" / "records.json", tmp_path / "b" / "records.json"
    assert _tool(monkeypatch, "tools/split_dataset.py", "check", a, b) == 0
    assert "no patient appears in more than one of 2 splits" in capsys.readouterr().out
    shutil.copy(a, tmp_path / "a_again.json")  # the same patients in two files
    assert _tool(monkeypatch, "tools/split_dataset.py", "check", a, tmp_path / "a_again.json") == 1
    patients = sorted({r["patient_id"] for r in json.load(open(a))})
    assert f"{len(patients)} patient(s) appear in more than one split: {patients[0]} " in capsys.readouterr().err


def test_prepare_with_workers_and_shards(tmp_path, monkeypatch):
    """docs/reproduce.md: prepare_dataset.py cbis-ddsm ... --workers 8, and vindr ... --workers 8 --shard I/N
    then merge, on the small releases of tests/realistic_fixtures.py (counts as in tests/test_end_to_end.py)."""
    from tests.realistic_fixtures import make_cbis_release, make_vindr_release

    make_cbis_release(str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    assert _tool(monkeypatch, "tools/prepare_dataset.py", "cbis-ddsm", "--root", "data/CBIS-DDSM", "--csv",
                 "data/mass_case_description_train_set.csv", "data/mass_case_description_test_set.csv",
                 "--output", "datasets/cbis_ddsm", "--size", 64, 64, "--workers", 2) == 0
    report = json.load(open("datasets/cbis_ddsm/prepared/report.json"))
    assert (report["inputs"], report["used"], report["skipped"]) == (13, 12, 1)  # one DICOM's pixels are cut

    make_vindr_release(str(tmp_path / "data" / "vindr-mammo"))
    for shard in ("1/2", "2/2"):
        assert _tool(monkeypatch, "tools/prepare_dataset.py", "vindr", "--root", "data/vindr-mammo", "--output",
                     "datasets/vindr", "--size", 64, 64, "--workers", 2, "--shard", shard) == 0
    assert _tool(monkeypatch, "tools/prepare_dataset.py", "merge", "--output", "datasets/vindr") == 0
    assert len(json.load(open("datasets/vindr/prepared/records.json"))) == 22


@pytest.mark.slow
def test_train_evaluate_and_resume_as_typed(tiny_datasets, tmp_path, monkeypatch):
    """docs/getting_started.md and docs/results.md: train_net.py ... SOLVER.MAX_ITER N DATASETS.TEST "()",
    --resume after a stop, then --eval-only MODEL.WEIGHTS, on the tiny sets (registered in this process).
    --eval-only into another OUTPUT_DIR, and into the run's own, which keeps the run's config.yaml."""
    out = tmp_path / "run"
    cfg = config_path("synthetic/d_tl_similarity.yaml")
    opts = [*TINY_OPTS, "DATASETS.TRAIN", "('mammo_synth_tiny_train',)", "SOLVER.CHECKPOINT_PERIOD", 1000,
            "TEST.PATIENT.BOOTSTRAP", 0]
    train = [*opts, "SOLVER.MAX_ITER", 4, "SOLVER.CHECKPOINT_PERIOD", 2, "DATASETS.TEST", "()", "OUTPUT_DIR", out]
    assert _tool(monkeypatch, "tools/train_net.py", "--config-file", cfg, *train) == 0
    assert (out / "model_0000001.pth").exists() and (out / "model_final.pth").exists()
    # stopped after the checkpoint of iteration 1 (2 iterations done): --resume does iterations 2 and 3
    (out / "model_final.pth").unlink()
    (out / "last_checkpoint").write_text("model_0000001.pth")
    (out / "metrics.json").unlink()
    assert _tool(monkeypatch, "tools/train_net.py", "--config-file", cfg, "--resume", *train) == 0
    iters = [json.loads(line)["iteration"] for line in open(out / "metrics.json") if "total_loss" in line]
    assert min(iters) >= 2 and max(iters) == 3 and (out / "model_final.pth").exists()
    assert _tool(monkeypatch, "tools/train_net.py", "--config-file", cfg, "--eval-only", *opts, "DATASETS.TEST",
                 "('mammo_synth_tiny_test',)", "OUTPUT_DIR", tmp_path / "eval",
                 "MODEL.WEIGHTS", out / "model_final.pth") == 0
    res = json.load(open(tmp_path / "eval" / "inference" / "eval_results.json"))
    res = res.get("mammo_synth_tiny_test", res)  # one test set: its results at the top
    assert res["patient"]["num_patients"] == 6  # 3 positive + 3 negative patients
    # --eval-only into the training run's own folder keeps the run's config.yaml (what --resume checks) and saves
    # its own beside it, so the run can still be resumed afterwards
    saved = (out / "config.yaml").read_bytes()
    assert _tool(monkeypatch, "tools/train_net.py", "--config-file", cfg, "--eval-only", *opts, "DATASETS.TEST",
                 "('mammo_synth_tiny_test',)", "OUTPUT_DIR", out, "MODEL.WEIGHTS", out / "model_final.pth") == 0
    assert (out / "config.yaml").read_bytes() == saved
    assert f"WEIGHTS: {out / 'model_final.pth'}" in (out / "config_eval.yaml").read_text()
    assert _tool(monkeypatch, "tools/train_net.py", "--config-file", cfg, "--resume", *train) == 0


def test_predict_with_every_documented_option(tmp_path, tmp_path_factory, monkeypatch):
    """docs/inference.md's command with every option (on CPU, a worker, batches of 2): boxes for each input,
    DICOM outputs for the DICOM input, the patients CSV's ids, decisions at the stored operating point."""
    import pydicom

    from tests.dicom_fixtures import make_dicom
    from tests.test_weights import tiny_config_file, tiny_weights

    src = tmp_path / "scans"
    src.mkdir()
    cv2.imwrite(str(src / "a.png"), breast_phantom(seed=1))
    make_dicom(src / "b.dcm", breast_phantom(seed=2), patient_id="PAT_B")  # as the CSV says (else a conflict)
    with open(src / "patients.csv", "w") as f:
        f.write("file,patient_id,laterality,view\na.png,PAT_A,L,CC\nb.dcm,PAT_B,L,MLO\n")
    weights = tmp_path / "model" / "model_final.pth"
    weights.parent.mkdir()
    shutil.copy(tiny_weights(tmp_path_factory), weights)
    points = tmp_path / "model" / "chosen_points.json"
    points.write_text(json.dumps({"weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
                                  "validation_dataset": "val", "points": {"youden": {
                                      "threshold": 0.0, "validation": {"sensitivity": 1.0, "specificity": 0.0}}}}))
    out = tmp_path / "predictions"
    assert _tool(monkeypatch, "tools/predict.py", "--config-file", tiny_config_file(tmp_path_factory),
                 "--input", src, "--output", out, "--overlay", "--dicom-out", out / "dicom",
                 "--patients", src / "patients.csv", "--operating-point", "youden", "--operating-points", points,
                 "--workers", 1, "--batch-size", 2, "--device", "cpu", "--min-score", 0, "--max-pixels", 10 ** 6,
                 "MODEL.WEIGHTS", weights) == 0
    preds = {os.path.basename(p["file_name"]): p for p in json.load(open(out / "predictions.json"))}
    assert sorted(preds) == ["a.png", "b.dcm"]
    assert {k: (p["patient_id"], p["laterality"], p["view"]) for k, p in preds.items()} == \
        {"a.png": ("PAT_A", "L", "CC"), "b.dcm": ("PAT_B", "L", "MLO")}
    for p in preds.values():  # threshold 0: every patient with a box above it is recalled
        assert p["patient_decision"] == ("recall" if p["max_score"] > 0 else "no recall")
        assert p["overlay"] and os.path.exists(os.path.join(out, p["overlay"]))
    dicoms = [pydicom.dcmread(p) for p in glob.glob(str(out / "dicom" / "**" / "*.dcm"), recursive=True)]
    source = pydicom.dcmread(src / "b.dcm")
    assert {d.SOPClassUID.name for d in dicoms} >= {"Grayscale Softcopy Presentation State Storage"}
    assert all(d.StudyInstanceUID == source.StudyInstanceUID for d in dicoms)


@pytest.mark.slow
def test_benchmarks_run_at_the_smallest_size(tmp_path, monkeypatch):
    """docs/benchmarks.md's bench/ commands with every option they show, at the smallest size, on CPU (the GPU
    rows with --device cpu), in this process (train_step.py --memory starts its own): each writes its JSON."""
    small = ["MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", 2, "MODEL.FPN.OUT_CHANNELS", 32,
             "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32, "MODEL.ROI_HEADS.SUSPECTED_TARGET.NUM_TOP_PROPOSALS", 16,
             "MODEL.DEVICE", "cpu", "INPUT.FIXED_SIZE", "(128, 128)"]
    cfg = config_path("synthetic/d_tl_similarity.yaml")
    runs = {
        "train_step": ["bench/train_step.py", "--config", cfg, "--device", "cpu", "--iters", 1, "--warmup", 0,
                       "--memory", "--json", tmp_path / "train_step.json", *small],
        "inference": ["bench/inference.py", "--config", cfg, "--device", "cpu", "--images", 2, "--rows", 256,
                      "--cols", 192, "--workers", 1, "--batch-size", 2, "--repeats", 1,
                      "--json", tmp_path / "inference.json", "INPUT.FIXED_SIZE", "(128, 128)"],
        "dicom_outputs": ["bench/dicom_outputs.py", "--boxes", 10, "--json", tmp_path / "dicom_outputs.json"],
        "data": ["bench/data_throughput.py", "--dicom-only", "--num-dicoms", 1, "--dicom-size", 256, 192,
                 "--repeat", 1, "--json", tmp_path / "data.json", "--train-step-json", tmp_path / "train_step.json"],
    }
    cv2_threads = cv2.getNumThreads()
    try:
        for name, cmd in runs.items():
            assert _tool(monkeypatch, *cmd) == 0, name
            assert json.load(open(cmd[cmd.index("--json") + 1])), name
    finally:
        cv2.setNumThreads(cv2_threads)  # data_throughput.py measures one thread, as prepare_dataset's workers


FAKE_TEST = """import os, subprocess, sys
import pytest
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
def test_runs_a():
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "x.py"), "--a", "2"], check=True)
def test_nothing():
    pass
@pytest.mark.xdist_group("together")
@pytest.mark.parametrize("i", range(4))
def test_grouped(i):
    with open(os.path.join(ROOT, f"worker_{i}"), "w") as f:
        f.write(os.environ.get("PYTEST_XDIST_WORKER", "none"))
"""


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_a_full_run_fails_listing_the_documented_commands_no_test_ran(tmp_path, workers):
    """tests/conftest.py's check, end to end, in a project of one doc and one test file (with and without
    pytest-xdist): a full run fails naming the documented command no test ran; a partial run says it did not
    check. With pytest-xdist's --dist loadgroup, as pytest.ini runs it, the tests of one xdist_group run on one
    worker (tests/conftest.py marks them so; without it each of the 4 went to either worker)."""
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "x.py").write_text("import sys\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "README.md").write_text("# data\n")
    (tmp_path / "Makefile").write_text("test:\n\tpython -m pytest tests\n")
    (tmp_path / "README.md").write_text("# p\n\n```bash\npython tools/x.py --a 1\npython tools/x.py --b 1\n```\n")
    shutil.copytree(os.path.join(REPO, "tests", "doc_commands"), tmp_path / "tests" / "doc_commands",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(REPO, "tests", "conftest.py"), tmp_path / "tests" / "conftest.py")
    # the conftest's fixtures call tests/common.py, whose imports (detectron2) would cost seconds per process
    (tmp_path / "tests" / "common.py").write_text("def set_threads():\n    pass\n")
    (tmp_path / "tests" / "__init__.py").write_text("")
    (tmp_path / "tests" / "test_one.py").write_text(FAKE_TEST)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "MAMMO_TL_COMMAND_LOG", "MAMMO_TL_TEST_PID")) and k != "PYTHONPATH"}

    def pytest_run(*args):
        cmd = [sys.executable, "-m", "pytest", "tests", "-p", "no:cacheprovider", "-q", *args]
        if workers:
            cmd += ["-n", str(workers), "--dist", "loadgroup"]
        return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    full = pytest_run()
    assert full.returncode == 1, full.stdout[-3000:]
    assert "6 passed" in full.stdout and "FAILED: 1 documented commands no test ran" in full.stdout
    ran_on = {(tmp_path / f"worker_{i}").read_text() for i in range(4)}
    assert len(ran_on) == 1 and ran_on <= ({"gw0", "gw1"} if workers else {"none"}), ran_on
    assert "README.md:5: python tools/x.py --b 1" in full.stdout
    assert "no test ran tools/x.py --b; tests ran: tools/x.py --a" in full.stdout
    # a test skipped for a missing system program (as tests/pacs.py's require() skips outside CI, here pointed at a
    # program that does not exist): the unrun command is listed loudly with what to install, and the run passes;
    # under CI=true it fails as before
    (tmp_path / "tests" / "test_two.py").write_text(
        "import pytest\ndef test_needs_a_pacs():\n"
        "    pytest.skip('/nonexistent/Orthanc is not installed (Debian/Ubuntu: apt-get install -y orthanc)')\n")
    env["CI"] = "false"
    lenient = pytest_run()
    assert lenient.returncode == 0, lenient.stdout[-3000:]
    assert "NOT CHECKED: 1 documented commands no test ran, because 1 tests were skipped" in lenient.stdout
    missing = "/nonexistent/Orthanc is not installed (Debian/Ubuntu: apt-get install -y orthanc)"
    assert f"skipped: {missing}" in lenient.stdout
    assert "README.md:5: python tools/x.py --b 1" in lenient.stdout and "bash .ci/run" in lenient.stdout
    env["CI"] = "true"
    strict = pytest_run()
    assert strict.returncode == 1, strict.stdout[-3000:]
    assert "FAILED: 1 documented commands no test ran" in strict.stdout
    (tmp_path / "tests" / "test_two.py").unlink()
    if not workers:
        return
    partial = pytest_run("-k", "runs_a")  # deselected by the workers, reported to the controller
    assert partial.returncode == 0, partial.stdout[-3000:]
    assert "documented commands not checked: 5 tests deselected" in partial.stdout
