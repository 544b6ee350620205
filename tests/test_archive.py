"""Finished runs kept without their weights and put back (mammo_tl/experiments/archive.py, tools/archive_runs.py):
what is kept and left out, the SHA-256 checks, the refusals, and reports of restored runs equal to the originals'."""
import hashlib
import json
import os

import pytest

from tests.common import run_in_process
from tests.test_gallery import write_fake_run
from tests.test_seeds import LABELS, A, D

LEFT_OUT = ["events.out.tfevents.1.host", "inference/fake_test/coco_instances_results.json", "last_checkpoint",
            "log.txt", "model_0000199.pth", "model_final.pth"]


def _runs(root):
    """Seeds 0 and 1 of rows a and d, evaluated, with operating points and the files an archive leaves out."""
    runs = {}
    for name, scores in (("a", A), ("d", D)):
        runs[name] = []
        for s in (0, 1):
            run = write_fake_run(os.path.join(root, f"seed_{s}", name), LABELS, scores[s], seed=s, ap50=0.5 + s / 10,
                                 points={"youden": 0.45})
            for rel in LEFT_OUT:
                if not os.path.exists(os.path.join(run, rel)):
                    with open(os.path.join(run, rel), "w") as f:
                        f.write("x" * 100)
            with open(os.path.join(run, "metrics.json"), "w") as f:
                f.write(json.dumps({"iteration": 9, "time": 0.5, "total_loss": 1.0}) + "\n")
            runs[name].append(run)
    os.makedirs(os.path.join(root, "seed_2", "a"))  # a run that never finished: listed, left
    with open(os.path.join(root, "seed_2", "a", "config.yaml"), "w") as f:
        f.write("SEED: 2\n")
    return runs


def test_archive_keeps_the_small_files_and_the_weights_digests(tmp_path):
    from mammo_tl.experiments.archive import archive_runs

    _runs(str(tmp_path / "src"))
    result = archive_runs(str(tmp_path / "src"), str(tmp_path / "arch"))
    assert result == {"archived": ["seed_0/a", "seed_0/d", "seed_1/a", "seed_1/d"], "unchanged": [],
                      "unfinished": ["seed_2/a"]}
    run, kept = tmp_path / "src" / "seed_0" / "a", tmp_path / "arch" / "seed_0" / "a"
    record = json.loads((kept / "archived.json").read_text())
    assert sorted(record["left_out"]) == LEFT_OUT
    assert record["weights"] == {"model_final.pth": hashlib.sha256((run / "model_final.pth").read_bytes()).hexdigest()}
    files = sorted(str(p.relative_to(kept)) for p in kept.rglob("*") if p.is_file())
    assert files == ["archived.json", "config.yaml", "inference/eval_results.json",
                     "inference/fake_test/patient_metrics.json", "inference/fake_test/patients.csv", "metrics.json",
                     "operating_points.json"]
    for rel, digest in record["files"].items():
        assert (kept / rel).read_bytes() == (run / rel).read_bytes()
        assert hashlib.sha256((kept / rel).read_bytes()).hexdigest() == digest
    # again: nothing changes; a changed run is refused, not mixed in
    assert archive_runs(str(tmp_path / "src"), str(tmp_path / "arch"))["unchanged"] == result["archived"]
    (run / "metrics.json").write_text("{}\n")
    from mammo_tl.experiments.archive import ArchiveError

    with pytest.raises(ArchiveError, match=r"seed_0/a holds the archive of another run"):
        archive_runs(str(tmp_path / "src"), str(tmp_path / "arch"))


def test_restored_runs_report_as_the_originals(tmp_path):
    """The aggregate report of the restored runs (no weights) equals that of the originals, operating points
    included (checked against the recorded digest); only the gallery, which needs per-box results, is missing."""
    from mammo_tl.evaluation.aggregate import write_aggregate_report
    from mammo_tl.experiments.archive import archive_runs, restore_runs

    runs = _runs(str(tmp_path / "src"))
    archive_runs(str(tmp_path / "src"), str(tmp_path / "arch"))
    assert restore_runs(str(tmp_path / "arch"), str(tmp_path / "back")) == {
        "restored": ["seed_0/a", "seed_0/d", "seed_1/a", "seed_1/d"], "unchanged": []}
    assert not list((tmp_path / "back").rglob("*.pth"))
    back = {n: [d.replace(str(tmp_path / "src"), str(tmp_path / "back")) for d in dirs] for n, dirs in runs.items()}
    original, _ = write_aggregate_report(runs, str(tmp_path / "r1"), bootstrap=200, gallery=0)
    restored, _ = write_aggregate_report(back, str(tmp_path / "r2"), bootstrap=200, gallery=0)
    assert restored["differences"] == original["differences"]
    for name in ("a", "d"):
        assert restored["configs"][name]["metrics"] == original["configs"][name]["metrics"]
        assert restored["configs"][name]["operating_points"] == original["configs"][name]["operating_points"]
    # the points were read from the restored runs, checked against the recorded digest: youden at 0.45 by hand
    assert restored["configs"]["a"]["operating_points"]["youden"]["specificity"]["values"] == pytest.approx(
        [2 / 3, 2 / 3])
    assert restore_runs(str(tmp_path / "arch"), str(tmp_path / "back"))["unchanged"] == [
        "seed_0/a", "seed_0/d", "seed_1/a", "seed_1/d"]


def test_restore_refusals_name_the_file(tmp_path):
    from mammo_tl.evaluation.operating_points import OperatingPointError
    from mammo_tl.evaluation.report import load_run
    from mammo_tl.experiments.archive import ArchiveError, restore_runs

    _runs(str(tmp_path / "src"))
    cmd = ["tools/archive_runs.py", "archive", str(tmp_path / "src"), str(tmp_path / "arch")]
    done = run_in_process(cmd)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["archived: 4 (seed_0/a, seed_0/d, seed_1/a, seed_1/d)", "unchanged: 0",
                                        "unfinished: 1 (seed_2/a)"]
    csv_file = tmp_path / "arch" / "seed_1" / "d" / "inference" / "fake_test" / "patients.csv"
    good = csv_file.read_bytes()
    csv_file.write_bytes(good.replace(b"0.55", b"0.95"))  # one score changed after archiving
    bad = run_in_process(["tools/archive_runs.py", "restore", str(tmp_path / "arch"), str(tmp_path / "back")])
    assert bad.returncode == 2 and f"{csv_file}: its content differs" in bad.stderr
    assert not (tmp_path / "back").exists()  # every archive is checked before any is copied
    csv_file.write_bytes(good)
    (tmp_path / "arch" / "seed_0" / "a" / "stray.json").write_text("{}")
    with pytest.raises(ArchiveError, match=r"seed_0/a/stray.json: not part of the archive"):
        restore_runs(str(tmp_path / "arch"), str(tmp_path / "back"))
    os.remove(tmp_path / "arch" / "seed_0" / "a" / "stray.json")
    held = tmp_path / "back" / "seed_0" / "d"
    held.mkdir(parents=True)
    (held / "config.yaml").write_text("SEED: 0\n")
    with pytest.raises(ArchiveError, match=r"seed_0/d holds another run or part of one \(e.g. config.yaml\)"):
        restore_runs(str(tmp_path / "arch"), str(tmp_path / "back"))
    assert sorted(p.name for p in (tmp_path / "back").rglob("*")) == ["config.yaml", "d", "seed_0"]  # none copied
    (held / "config.yaml").unlink()
    (held / "run_inputs.json").write_text("{}")  # written for a run not started yet: replaced
    assert len(restore_runs(str(tmp_path / "arch"), str(tmp_path / "back"))["restored"]) == 4
    # operating points chosen for other weights than the recorded ones are refused, as with the weights at hand
    record = json.loads((held / "archived.json").read_text())
    record["weights"]["model_final.pth"] = "0" * 64
    (held / "archived.json").write_text(json.dumps(record))
    with pytest.raises(OperatingPointError, match="chosen for other weights"):
        load_run(str(held))
    del record["weights"]["model_final.pth"]  # no digest known: no operating points, rather than unchecked ones
    (held / "archived.json").write_text(json.dumps(record))
    assert load_run(str(held))["points"] is None
    bad = run_in_process(["tools/archive_runs.py", "restore", str(tmp_path / "nowhere"), str(tmp_path / "back")])
    assert bad.returncode == 2 and "nowhere: no such folder" in bad.stderr


def test_one_definition_of_a_finished_run(tmp_path):
    """is_finished, which both the archive and the rows' reuse go by: test results and the weights they belong to
    (the selected checkpoint and the final one), or an archived run; a run missing its selected weights is not
    finished, so neither command reuses nor archives it."""
    from mammo_tl.evaluation.runs import is_finished
    from mammo_tl.experiments.archive import archive_runs, find_runs

    run = tmp_path / "src" / "r"
    (run / "inference").mkdir(parents=True)
    (run / "config.yaml").write_text("SEED: 0\n")
    assert not is_finished(str(run))
    (run / "inference" / "eval_results.json").write_text("{}")
    assert not is_finished(str(run))  # no weights
    (run / "model_final.pth").write_bytes(b"w")
    assert is_finished(str(run))  # no selection.json: the final weights are the selected ones
    (run / "selection.json").write_text(json.dumps({"selected": {"weights": "model_best.pth"}}))
    assert not is_finished(str(run))
    assert find_runs(str(tmp_path / "src")) == ([], ["r"])
    (run / "model_best.pth").write_bytes(b"b")
    assert is_finished(str(run)) and find_runs(str(tmp_path / "src")) == (["r"], [])
    archive_runs(str(tmp_path / "src"), str(tmp_path / "arch"))
    kept = tmp_path / "arch" / "r"
    assert not (kept / "model_best.pth").exists() and is_finished(str(kept))
